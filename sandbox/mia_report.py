"""Membership-inference reports: ``report.md`` tables and plots (``roc.png``, ``roc_log.png``, ``set_auc.png``).

Called by :mod:`sandbox.report` for reports of ``kind: membership`` (see :mod:`sandbox.membership`). A pass whose
calibration found no signal (``report["signal"]``, :mod:`sandbox.calibration`) is marked "no signal on
calibration: not a result" in the table and the summary line, with no AUC, and is left out of the plots.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import NO_SIGNAL
from .experiment import retrieval_words

PLOTS = ("roc.png", "roc_log.png", "set_auc.png")


def _fmt(m: dict[str, float] | None) -> str:
    if not m or m.get("value") is None:
        return "–"
    if m["ci_low"] == m["ci_high"] == m["value"]:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def pass_keys(r: dict[str, Any]) -> list[str]:
    """The ``method=...`` keys of the report, in the order they ran (passes without signal included)."""
    return list(dict.fromkeys([*r.get("passes", []), *r.get("roc", {})]))


def no_signal(r: dict[str, Any], key: str) -> str | None:
    """Why pass ``key``'s calibration found no signal (one line), or None where it is a result."""
    s = r.get("signal", {}).get(key)
    return s["reason"] if s and not s["signal"] else None


def render(r: dict[str, Any]) -> str:
    m = r["metrics"]
    scn = r["scenario"]
    sizes = sorted({int(k) for v in r.get("set_auc", {}).values() for k in v})
    lines = [f"# Sandbox report: {scn['name']} (membership inference)", "",
             f"Run `{r['run_id']}` on collection `{r['collection']}`, seed {r['seed']}, {r['wall_seconds']:.1f} s wall; "
             f"retrieval {retrieval_words(r)}.", "",
             f"Data: {r['data']}; targets by status: {r['targets_by_status']} (share without a usable mask: "
             f"{_fmt(m.get('targets_without_mask'))}); K = {scn['mrm']['masks']} masks, Q = {scn['mrm']['trials']} trials; "
             f"p_t calibrated on the shadow set: " + ", ".join(f"{k}: {v:.3f}" for k, v in r["p_t"].items()) + ".", "",
             "| method | AUC [95% CI] | TPR@1%FPR | TPR@5%FPR | " + " | ".join(f"set AUC@{k}" for k in sizes)
             + " | queries/target | failed generator calls |", "|---" * (6 + len(sizes)) + "|"]
    failed = r.get("failed_trials", {})
    for key in pass_keys(r):
        if no_signal(r, key):
            row = [key.removeprefix("method="), f"**{NO_SIGNAL}**", "–", "–"] + ["–"] * len(sizes)
        else:
            row = [key.removeprefix("method="), _fmt(m.get(f"auc[{key}]")), _fmt(m.get(f"tpr@1%fpr[{key}]")),
                   _fmt(m.get(f"tpr@5%fpr[{key}]"))]
            row += [_fmt(m.get(f"set_auc@{k}[{key}]")) for k in sizes]
        row.append(_fmt(m.get(f"queries_per_target[{key}]")))
        row.append(str(failed.get(key, 0)))
        lines.append("| " + " | ".join(row) + " |")
    silent = [(key, no_signal(r, key)) for key in pass_keys(r) if no_signal(r, key)]
    if silent:
        lines += ["", f"**{len(silent)} pass(es) without signal on calibration** (not results: their scores cannot tell "
                  "members from non-members, so no AUC is given):", ""]
        lines += [f"- `{key.removeprefix('method=')}`: {why}" for key, why in silent]
    bad = [t for t in r.get("per_target", []) if t.get("status") in ("corrupt", "too_small")]
    if bad:
        lines += ["", f"**{len(bad)} target(s) could not be attacked** (corrupt, unreadable or too small to mask; each "
                  "stays in every ROC with the neutral score 0.5):", ""]
        lines += [f"- `{t['id']}` ({'member' if t['member'] else 'non-member'}, {t['status']}): {t['reason']}"
                  for t in bad[:20]]
        if len(bad) > 20:
            lines.append(f"- ... and {len(bad) - 20} more (report.json, per_target)")
    if sum(failed.values()):
        lines += ["", f"**{sum(failed.values())} generator call(s) failed** (after retries; recorded as failed trials, "
                  "which look like non-membership): the figures above understate the attack."]
    lines += ["", "## Reversibility", "", f"fingerprint before: `{r['fingerprint_before']}`",
              f"fingerprint after:  `{r['fingerprint_after']}` "
              f"({'identical' if r['fingerprint_before'] == r['fingerprint_after'] else 'DIFFERENT'})"]
    lines += [f"- {e}" for e in r.get("fingerprint_explained", [])]
    lines += ["", "## Time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {t:.1f} |" for s, t in r["stage_seconds"].items()]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), ""]
    return "\n".join(lines)


def plot(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    keys = [k for k in pass_keys(r) if "defense=" not in k and k in r.get("roc", {})]
    for fname, log in (("roc.png", False), ("roc_log.png", True)):
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        for key in keys:
            pts = r["roc"][key]
            auc = r["metrics"].get(f"auc[{key}]", {}).get("value")
            fpr = np.maximum(pts["fpr"], 1e-3) if log else pts["fpr"]  # FPR 0 drawn at the axis' left edge
            ax.plot(fpr, pts["tpr"],  # straight segments: the ROC of tied scores is the chord
                    label=f"{key.removeprefix('method=')} (AUC {auc:.3f})" if auc is not None else key)
        chance = np.logspace(-3, 0, 50) if log else np.array([0.0, 1.0])
        ax.plot(chance, chance, "k:", lw=0.8)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(1e-3, 1)
        ax.set_xlabel("false positive rate" + (" (log)" if log else ""))
        ax.set_ylabel("true positive rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{r['scenario']['name']}: sample-level ROC")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        made.append(fname)
    if r.get("set_auc"):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for key in keys:
            v = r["set_auc"].get(key, {})
            if v:
                ks = sorted(v, key=int)
                ax.plot([int(k) for k in ks], [v[k] for k in ks], "o-", label=key.removeprefix("method="))
        ax.set_xlabel("images per set (K)")
        ax.set_ylabel("set-level AUC")
        ax.set_ylim(0.4, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "set_auc.png", dpi=120)
        plt.close(fig)
        made.append("set_auc.png")
    return made


def summary_line(r: dict[str, Any]) -> str:
    """One line for the terminal: each undefended method's AUC, MrM first; a method whose calibration found
    no signal is named with "no signal on calibration: not a result" instead."""
    m = r["metrics"]
    parts = []
    for key in ("method=mrm", *[k for k in pass_keys(r) if re.fullmatch(r"method=[\w.-]+", k) and k != "method=mrm"]):
        if no_signal(r, key):
            parts.append(f"{key.removeprefix('method=')}: {NO_SIGNAL}")
        elif f"auc[{key}]" in m:
            a = m[f"auc[{key}]"]
            parts.append(f"{key.removeprefix('method=')} AUC {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]")
    failed = sum(r.get("failed_trials", {}).values())
    if failed:
        parts.append(f"WARNING: {failed} generator call(s) failed (see report.md)")
    return "; ".join(parts)
