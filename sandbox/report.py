"""Scenario reports: ``report.json`` (machine-readable), ``report.md`` (for people) and PNG plots.

``report.json`` has at least ``scenario``, ``seed``, ``versions``, ``wall_seconds``,
``stage_seconds``, ``fingerprint_before``, ``fingerprint_after`` and ``metrics`` (a flat mapping
from metric name to ``{"value", "ci_low", "ci_high"}``, bootstrap 95% CIs over queries).

Plots (matplotlib, Agg backend): ``asr_vs_rate.png`` (achieved ASR@k and the unconstrained upper
bound against the poison rate, with CIs), ``defenses.png`` (each defense's ASR@k against its clean
accuracy: the trade-off), ``pgd_similarity.png`` (the optimisation curve).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .experiment import retrieval_words


def _fmt(m: dict[str, float] | None, pct: bool = False) -> str:
    if not m or m.get("value") is None or (isinstance(m["value"], float) and math.isnan(m["value"])):
        return "–"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    if m["ci_low"] == m["ci_high"] == m["value"]:
        return f(m["value"])
    return f"{f(m['value'])} [{f(m['ci_low'])}, {f(m['ci_high'])}]"


def render_markdown(r: dict[str, Any]) -> str:
    if r.get("kind") == "membership":
        from .mia_report import render

        return render(r)
    m = r["metrics"]
    scn = r["scenario"]
    k = scn["rag"]["top_k"]
    lines = [f"# Sandbox report: {scn['name']}", "",
             f"Run `{r['run_id']}` on collection `{r['collection']}` ({'live' if r.get('live') else 'experiment'}), seed {r['seed']}, "
             f"{r['wall_seconds']:.1f} s wall; retrieval {retrieval_words(r)}.", "",
             f"Data: {r['data']}; task `{r['task']}`; chance s_rand = {r['chance']['s_rand']:.3f} "
             f"({r['chance']['rule']}: {r['chance']['answer']!r}).", ""]
    if r.get("unreadable_items"):
        bad = r["unreadable_items"]
        lines += [f"**{len(bad)} item(s) of the source could not be read** and are in no part of the split: "
                  + "; ".join(f"`{b['source']}`: {b['reason']}" for b in bad[:5]) + (" ..." if len(bad) > 5 else ""), ""]
    a = r.get("attack")
    if a and a["name"] == "query_copy":
        lines += [f"Attack: `query_copy` baseline: each of the {a['poisons']} test images itself, with a dirty text "
                  "(needs query knowledge; an upper bound).", ""]
    elif a:
        lines += [f"Attack: `{a['name']}` ({a['access']}, objective {a['objective']}), {a['poisons']} poisons "
                  f"(poison rate {_fmt(m.get('poison_rate'), pct=True)}); similarity to target after 8-bit quantisation: mean "
                  f"{a['similarity_to_target_quantised']['mean']:.3f}, min {a['similarity_to_target_quantised']['min']:.3f}; "
                  + (f"{a['steps_per_second_per_image']:.1f} PGD steps/s per image"
                     if a['steps_per_second_per_image'] == a['steps_per_second_per_image'] else "no optimisation")
                  + (f"; {a['oracle_queries']:,} oracle queries" if a.get("oracle_queries") else "") + ".", ""]
    lines += ["| metric | value [95% CI] |", "|---|---|"]
    for name in sorted(m):
        lines.append(f"| `{name}` | {_fmt(m[name])} |")
    if "bound_ratio" in r:
        lines += ["", f"Achieved / upper bound: {r['bound_ratio']:.2f}."]
    if r.get("sweep"):
        lines += ["", "## ASR against poison rate", "", f"| poisons | rate | ASR@{k} | bound | ratio |", "|---|---|---|---|---|"]
        for row in r["sweep"]:
            lines.append(f"| {row['poisons']} | {100 * row['poison_rate']:.2f}% | {_fmt(row[f'asr@{k}'])} | "
                         f"{_fmt(row[f'asr_bound@{k}'])} | {row['ratio']:.2f} |")
    if r.get("defenses"):
        lines += ["", "## Defenses", "", f"| defense | stage | threshold | ASR@{k} | clean accuracy | attacked accuracy | "
                  "wrongly rejected clean |", "|---|---|---|---|---|---|---|"]
        for d in r["defenses"]:
            tag = f"[defense={d['name']}]"
            lines.append(f"| {d['name']} | {d['stage']} | {d['fit']['direction']} {d['fit']['threshold']:.4g} | "
                         f"{_fmt(m.get(f'asr@{k}{tag}'))} | {_fmt(m.get(f'accuracy_clean{tag}'))} | "
                         f"{_fmt(m.get(f'accuracy_attacked{tag}'))} | {_fmt(m.get(f'rejected_clean{tag}'), pct=True)} |")
    lines += ["", "## Reversibility", "", f"fingerprint before: `{r['fingerprint_before']}`",
              f"fingerprint after:  `{r['fingerprint_after']}` "
              f"({'identical' if r['fingerprint_before'] == r['fingerprint_after'] else 'DIFFERENT'})"]
    for e in r.get("fingerprint_explained", []):
        lines.append(f"- {e}")
    lines += ["", "## Time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {t:.1f} |" for s, t in r["stage_seconds"].items()]
    lines += ["", "Versions: " + ", ".join(f"{k_} {v}" for k_, v in r["versions"].items()), ""]
    return "\n".join(lines)


def plot(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if r.get("kind") == "membership":
        from .mia_report import plot as plot_membership

        return plot_membership(r, out)
    k = r["scenario"]["rag"]["top_k"]
    made = []
    rows = list(r.get("sweep") or [])
    if f"asr@{k}" in r["metrics"] and f"asr_bound@{k}" in r["metrics"]:
        rows.append({"poisons": r["poison_count"], "poison_rate": r["metrics"]["poison_rate"]["value"],
                     f"asr@{k}": r["metrics"][f"asr@{k}"], f"asr_bound@{k}": r["metrics"][f"asr_bound@{k}"]})
    rows = sorted({row["poisons"]: row for row in rows}.values(), key=lambda x: x["poisons"])
    if rows:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        x = [100 * row["poison_rate"] for row in rows]
        for key, label, style in ((f"asr@{k}", "M3Att (achieved)", "o-"), (f"asr_bound@{k}", "unconstrained bound", "s--")):
            y = [row[key]["value"] for row in rows]
            lo = [row[key]["value"] - row[key]["ci_low"] for row in rows]
            hi = [row[key]["ci_high"] - row[key]["value"] for row in rows]
            ax.errorbar(x, y, yerr=[lo, hi], fmt=style, capsize=3, label=label)
        ax.set_xlabel("poison rate (% of knowledge base)")
        ax.set_ylabel(f"ASR@{k}")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(r["scenario"]["name"])
        fig.tight_layout()
        fig.savefig(out / "asr_vs_rate.png", dpi=120)
        plt.close(fig)
        made.append("asr_vs_rate.png")
    if r.get("defenses") and f"asr@{k}" in r["metrics"]:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        m = r["metrics"]
        ax.scatter([m["accuracy_clean"]["value"]], [m[f"asr@{k}"]["value"]], marker="x", color="k", label="no defense")
        for d in r["defenses"]:
            tag = f"[defense={d['name']}]"
            if f"asr@{k}{tag}" in m:
                ax.scatter([m[f"accuracy_clean{tag}"]["value"]], [m[f"asr@{k}{tag}"]["value"]], label=d["name"])
        ax.set_xlabel("clean accuracy")
        ax.set_ylabel(f"ASR@{k} under attack")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("defense trade-off")
        fig.tight_layout()
        fig.savefig(out / "defenses.png", dpi=120)
        plt.close(fig)
        made.append("defenses.png")
    hist = (r.get("attack") or {}).get("history")
    if hist:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        ax.plot(range(len(hist)), hist)
        ax.set_xlabel("step (subsampled)")
        ax.set_ylabel("mean cosine to target")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "pgd_similarity.png", dpi=120)
        plt.close(fig)
        made.append("pgd_similarity.png")
    return made


PLOTS = ("asr_vs_rate.png", "defenses.png", "pgd_similarity.png", "roc.png", "roc_log.png", "set_auc.png")


def prepare_out(out_dir: str | Path) -> Path:
    """Create the report folder (or check an existing one) and remove plots of an earlier report in it;
    raises :class:`InvalidInputError` with one line if it cannot be used."""
    from heterag import InvalidInputError

    if not str(out_dir).strip():
        raise InvalidInputError("--out: give a folder for the report")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InvalidInputError(f"--out: cannot write into {out}: {exc.strerror or exc}") from None
    for name in PLOTS:
        (out / name).unlink(missing_ok=True)
    return out


def _finite(x: Any) -> Any:
    """NaN and infinities become null: report.json is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir``; returns the Markdown path."""
    out = prepare_out(out_dir)
    report = dict(report)
    report["plots"] = plot(report, out)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(_finite(report), indent=2, default=float, allow_nan=False))
    tmp.replace(out / "report.json")
    (out / "report.md").write_text(render_markdown(report))
    return out / "report.md"
