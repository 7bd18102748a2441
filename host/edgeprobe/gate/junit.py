"""JUnit XML of a gate or comparison: one testcase per cell, for any CI that reads JUnit.

A regression is a ``<failure>``; an inconclusive cell is ``<skipped>`` with its reason (JUnit has
no third outcome; the gate's exit code 2 says "inconclusive" to the CI); every metric's verdict and
numbers are ``<properties>`` of its testcase, and the reason is in ``<system-out>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Sequence

from edgeprobe.gate.compare import INCONCLUSIVE, REGRESSION, CellComparison


def _fmt(x) -> str:
    return "" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)


def junit_xml(cells: Sequence[CellComparison], *, suite: str = "edgeprobe gate", time_s: float = 0.0) -> str:
    failures = sum(c.outcome == REGRESSION for c in cells)
    skipped = sum(c.outcome == INCONCLUSIVE for c in cells)
    root = ET.Element("testsuites", name=suite, tests=str(len(cells)), failures=str(failures))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cells)), failures=str(failures),
                       errors="0", skipped=str(skipped), time=f"{time_s:.3f}")
    for c in cells:
        tc = ET.SubElement(ts, "testcase", classname=f"edgeprobe.gate.{c.device}", name=f"{c.model}/{c.recipe}")
        props = ET.SubElement(tc, "properties")
        for key, value in (("device", c.device), ("baseline", c.baseline_label), ("candidate", c.candidate_label),
                           ("baseline_launches", c.baseline_launches), ("candidate_launches", c.candidate_launches)):
            ET.SubElement(props, "property", name=key, value=_fmt(value))
        for m in c.metrics:
            s = m.comparison
            ET.SubElement(props, "property", name=m.metric, value=m.verdict)
            if s is not None:
                for k in ("baseline_median", "candidate_median", "relative_shift", "p_value"):
                    ET.SubElement(props, "property", name=f"{m.metric}.{k}", value=_fmt(getattr(s, k)))
        if c.outcome == REGRESSION:
            ET.SubElement(tc, "failure", message=c.reason, type="regression").text = c.reason
        elif c.outcome == INCONCLUSIVE:
            ET.SubElement(tc, "skipped", message=f"inconclusive: {c.reason}")
        ET.SubElement(tc, "system-out").text = "\n".join(f"{m.metric}: {m.verdict}: {m.reason}" for m in c.metrics)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
