"""GitHub Actions outputs of a gate or comparison: workflow-command annotations and a Markdown
step summary (write it to ``$GITHUB_STEP_SUMMARY`` with ``--summary``).

A regression is an ``::error::``, an inconclusive or unstable cell a ``::warning::``; a pass gives
no annotation. Messages follow the workflow-command escaping rules (``%``, CR, LF; and ``:`` and
``,`` in properties).
"""

from __future__ import annotations

from typing import Sequence

from edgeprobe.gate.compare import INCONCLUSIVE, REGRESSION, UNAVAILABLE, CellComparison


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(cells: Sequence[CellComparison]) -> list[str]:
    out = []
    for c in cells:
        if c.outcome == REGRESSION:
            out.append(f"::error title={_prop('edgeprobe gate: ' + c.name)}::{_data('regression: ' + c.reason)}")
        elif c.outcome == INCONCLUSIVE:
            out.append(f"::warning title={_prop('edgeprobe gate: ' + c.name)}::{_data('inconclusive: ' + c.reason)}")
    return out


def _pct(x) -> str:
    return "—" if x is None else f"{x * 100:+.1f} %"


def _num(x) -> str:
    return "—" if x is None else f"{x:.4g}"


def summary_markdown(cells: Sequence[CellComparison], *, title: str = "edgeprobe gate") -> str:
    icon = {REGRESSION: "❌ regression", INCONCLUSIVE: "⚠️ inconclusive"}
    lines = [f"## {title}", "", "| cell | outcome | launches (baseline / candidate) | latency p50 | peak memory | "
             "artifact size |", "|---|---|---|---|---|---|"]
    for c in cells:
        cols = []
        for name in ("latency_p50_ms", "peak_memory_mib", "artifact_size_bytes"):
            m = c.metric(name)
            s = m.comparison
            if m.verdict == UNAVAILABLE or s is None:
                cols.append(m.reason)
            else:
                cols.append(f"{m.verdict} {_num(s.baseline_median)} → {_num(s.candidate_median)} {m.unit} "
                            f"({_pct(s.relative_shift)}" + (", unstable" if m.unstable else "") + ")")
        lines.append(f"| {c.name} | {icon.get(c.outcome, '✅ pass')} | {c.baseline_launches} / {c.candidate_launches} | "
                     + " | ".join(cols) + " |")
    lines += ["", "Verdicts: p = min(Mann-Whitney U, Kolmogorov-Smirnov) on per-launch values, a Hodges-Lehmann "
              "shift with a bootstrap interval, and a practical floor; see docs/gate.md."]
    for c in cells:
        if c.outcome != "pass":
            lines.append(f"- **{c.name}**: {c.reason}")
    return "\n".join(lines) + "\n"
