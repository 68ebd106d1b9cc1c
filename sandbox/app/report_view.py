"""A finished run's report in the Sandbox tab: the metrics table (escaped HTML), the figures, downloads.

Figures: ``asr_by_defense.png`` (made here: ASR@k with no defense and under each defense, with 95%
CIs), and those :mod:`sandbox.report` wrote where the run had them: ``asr_vs_rate.png`` (ASR against
the poison rate with the upper bound), ``defenses.png`` (ASR against clean accuracy), ``roc.png`` and
``roc_log.png`` (membership inference, linear and log FPR), ``set_auc.png``, ``pgd_similarity.png``.
The app serves only files inside its private upload folder, so :func:`publish` copies the report
there.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: (file, caption) of the figures, in the order the tab shows them.
FIGURES = (
    ("asr_by_defense.png", "ASR per defense (95% CI)"),
    ("asr_vs_rate.png", "ASR against poison rate, with the unconstrained bound"),
    ("roc.png", "ROC (linear FPR)"),
    ("roc_log.png", "ROC (log FPR)"),
    ("defenses.png", "Defense trade-off: ASR against clean accuracy"),
    ("set_auc.png", "Set-level AUC"),
    ("pgd_similarity.png", "Optimisation curve"),
)


def load(report_dir: Path) -> dict[str, Any]:
    return json.loads((report_dir / "report.json").read_text())


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.3f}"


def metrics_html(report: dict[str, Any]) -> str:
    """The metrics as an HTML table: name, value, 95% CI (every cell escaped)."""
    m = report.get("metrics") or {}
    rows = "".join(
        f'<tr data-metric="{html.escape(name)}"><td><code>{html.escape(name)}</code></td><td>{_fmt(v.get("value"))}</td>'
        f'<td>[{_fmt(v.get("ci_low"))}, {_fmt(v.get("ci_high"))}]</td></tr>'
        for name, v in sorted(m.items()) if isinstance(v, dict))
    scn = report.get("scenario") or {}
    b, a = report.get("fingerprint_before"), report.get("fingerprint_after")
    fp = (f"fingerprint before <code>{html.escape(str(b)[:16])}</code>, after <code>{html.escape(str(a)[:16])}</code>: "
          f"{'identical' if a == b else 'DIFFERENT'}") if a and b else ""
    head = (f"<p><b>{html.escape(str(scn.get('name', '')))}</b>, run <code>{html.escape(str(report.get('run_id', '')))}</code> "
            f"on collection <code>{html.escape(str(report.get('collection', '')))}</code>, "
            f"{float(report.get('wall_seconds') or 0):.1f} s; {fp}</p>")
    return (f'<div class="hr-sb-report">{head}<table><thead><tr><th>metric</th><th>value</th><th>95% CI</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def defense_bars(report: dict[str, Any], out: Path) -> Path | None:
    """``asr_by_defense.png`` in ``out``: ASR@k without a defense and under each, with CIs; None when the
    report has no ASR (membership inference, or no attack)."""
    m = report.get("metrics") or {}
    k = ((report.get("scenario") or {}).get("rag") or {}).get("top_k", 5)
    bars = [("no defense", m.get(f"asr@{k}"))]
    bars += [(d["name"], m.get(f"asr@{k}[defense={d['name']}]")) for d in report.get("defenses") or []]
    bars = [(n, v) for n, v in bars if v and v.get("value") is not None]
    if not bars:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    values = [v["value"] for _, v in bars]
    err = [[v["value"] - (v.get("ci_low") if v.get("ci_low") is not None else v["value"]) for _, v in bars],
           [(v.get("ci_high") if v.get("ci_high") is not None else v["value"]) - v["value"] for _, v in bars]]
    ax.bar([n for n, _ in bars], values, yerr=err, capsize=4, color=["#d32f2f"] + ["#1976d2"] * (len(bars) - 1))
    ax.set_ylabel(f"ASR@{k}")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("attack success per defense")
    fig.tight_layout()
    path = out / "asr_by_defense.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def publish(report_dir: Path, run_id: str) -> Path:
    """A copy of ``report_dir``'s report.json, report.md and PNGs inside the app's private upload folder
    (``$GRADIO_TEMP_DIR``, else a private temporary folder), where the app may serve them."""
    root = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "sandbox-reports" / run_id
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in report_dir.iterdir():
        if p.is_file() and (p.suffix == ".png" or p.name in ("report.json", "report.md")):
            shutil.copy2(p, root / p.name)
    return root


def view(report_dir: Path, run_id: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(metrics HTML, [(figure path, caption)], [download paths]) of the report in ``report_dir``."""
    report = load(report_dir)
    if not (report_dir / "asr_by_defense.png").exists():
        defense_bars(report, report_dir)
    served = publish(report_dir, run_id)
    figures = [(str(served / name), caption) for name, caption in FIGURES if (served / name).exists()]
    downloads = [str(served / n) for n in ("report.json", "report.md")] + sorted(
        str(p) for p in served.glob("*.png"))
    return metrics_html(report), figures, downloads


__all__ = ["FIGURES", "defense_bars", "metrics_html", "publish", "view"]
