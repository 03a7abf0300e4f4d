"""A replay report as a text table, JSON, or one self-contained HTML file."""

from __future__ import annotations

import html
import io
import json
import re
from datetime import UTC, datetime

from slatebandit.replay.evaluate import NOTE, Report


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


def _number(x: float | None, digits: int = 5) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _when(at: float | int | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rows(report: Report) -> list[list[str]]:
    rows = []
    for policy in report.to_dict()["policies"]:  # type: ignore[attr-defined]
        for e in policy["estimates"]:
            rows.append(
                [
                    policy["policy"],
                    e["estimator"],
                    _number(e["value"]),
                    f"[{_number(e['ci_low'])}, {_number(e['ci_high'])}]",
                    f"[{_number(e['gaussian_low'])}, {_number(e['gaussian_high'])}]",
                    _number(e["ess"], 0),
                    _number(e["max_weight"], 1),
                ]
            )
    return rows


HEADER = ["policy", "estimator", "value", "95% interval", "Gaussian 95%", "ESS", "max weight"]


def _summary(report: Report) -> str:
    window = report.window
    interval = f"bootstrap, {report.bootstrap} replicates" if report.bootstrap else "Gaussian"
    return (
        f"{report.n_decisions} decisions, {report.n_slots} slots, logged "
        f"{_when(window.get('first_decision_at'))} to {_when(window.get('last_decision_at'))}; "
        f"metric {report.metric}: value = expected {report.meaning}; intervals: {interval}, "
        f"seed {report.seed}"
    )


def to_table(report: Report) -> str:
    rows = [HEADER, *_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [_summary(report), ""]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", *(f"warning: {w}" for w in report.warnings), f"note: {NOTE}"]
    return "\n".join(lines) + "\n"


def _plot_svg(report: Report) -> str:
    """Each policy's estimates with their intervals, as inline SVG (matplotlib, no JS)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, lows, highs = [], [], [], []
    for policy, estimates in report.policies:
        for e in estimates:
            labels.append(f"{policy} · {e.estimator}")
            values.append(e.value)
            lows.append(e.value - e.ci_low)
            highs.append(e.ci_high - e.value)
    figure, axes = plt.subplots(figsize=(8, 0.32 * len(labels) + 1.2))
    positions = list(range(len(labels)))[::-1]
    axes.errorbar(values, positions, xerr=[lows, highs], fmt="o", capsize=3)
    axes.set_yticks(positions, labels)
    axes.set_xlabel(f"estimated {report.meaning} (95% interval)")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    out = io.StringIO()
    with matplotlib.rc_context(
        {"svg.hashsalt": "slatebandit"}
    ):  # stable ids: same report, same file
        figure.savefig(out, format="svg", metadata={"Date": None})
    plt.close(figure)
    svg = out.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
    return svg[svg.index("<svg") :]


def to_html(report: Report) -> str:
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in _rows(report)
    )
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in report.warnings) or "<li>none</li>"
    plot = _plot_svg(report) if report.policies and report.n_slots else ""
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>slatebandit replay</title>
<style>
body {{ font: 14px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 60em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.2em 0.8em; text-align: left; }}
tr:nth-child(even) {{ background: #f4f4f4; }} .note {{ color: #555; }}
</style></head><body>
<h1>Off-policy replay</h1>
<p>{html.escape(_summary(report))}</p>
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
{plot}
<h2>Warnings</h2><ul>{warnings}</ul>
<p class="note">{html.escape(NOTE)}</p>
</body></html>
"""
