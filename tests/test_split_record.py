"""The split plan record read back (SplitPlan.load / from_json): a saved plan equals itself, request
included; a newer schema is refused naming both versions; a wrong nested type is a ResultError. And
the split package measures through a session, never through edgeprobe.api. No torch, no device."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from edgeprobe.errors import ResultError
from edgeprobe.request import Request
from edgeprobe.split import PLAN_SCHEMA_VERSION, CandidateRow, SplitPlan

SPLIT_PACKAGE = Path(__file__).resolve().parents[1] / "host" / "edgeprobe" / "split"


def _row(label: str, kind: str, n: int, **kw) -> CandidateRow:
    return CandidateRow(label, kind, n, ("relu_1",) if kind == "split" else (), 4_096 * n, 1.25 * n, 0.5, 3.0, 0.25,
                        40.0, 45.0 + n, device_node_names=tuple(f"n{k}" for k in range(n)), **kw)


def _plan(**kw) -> SplitPlan:
    dev = _row("device-only", "device-only", 4, measured_head_ms=5.5, confirmed_total_ms=50.5,
               confirm_source="p50 of 10 runs of the whole model")
    cloud = _row("cloud-only", "cloud-only", 0, confirmed_total_ms=45.0, confirm_source="no head")
    mid = _row("after relu_1", "split", 2, measured_e2e_p50_ms=47.0, measured_e2e_p90_ms=49.0,
               prediction_error=0.0, sqnr_db=120.5, error=None)
    bad = _row("after conv_2", "split", 3, error="RuntimeError: the runner failed", confirm_error="TransportError: x")
    request = Request("split", {"model": "tiny_cnn", "input_shape": [1, 3, 16, 16], "token": "<given; not stored>",
                                "device_costs": "<edgeprobe.split.costs.DeviceCosts>", "policy_bps": None},
                      ("device_costs: a DeviceCosts object has no stored form; pass a name, a path or a file",))
    fields = dict(model_ref="tiny_cnn", device="local", server="tcp:127.0.0.1:7100", uplink_bps=5.85e6,
                  downlink_bps=20e6, rtt_ms=40.0, encoding="fp32", objective="latency",
                  per_message_overhead_bytes=120, packet_overhead_bytes=52, request_overhead_ms=0.72, chosen=mid,
                  device_only=dev, cloud_only=cloud, candidates=(mid, dev, bad, cloud),
                  policy=((58_500.0, "device-only"), (5.85e6, "after relu_1")),
                  cost_sources={"device": "ETDump", "server": "fx interpreter"}, created_utc="2026-12-01T00:00:00+00:00",
                  regret=1.0, best_measured="after relu_1", median_abs_prediction_error=0.02,
                  notes=("WARNING: the link measured to 127.0.0.1:7100 is not the declared one",),
                  declared_link={"uplink_bps": 5.85e6, "downlink_bps": 20e6, "rtt_ms": 40.0},
                  measured_link={"path": "127.0.0.1:7100", "rtt_ms": 0.1, "uplink_bps": 1e9, "downlink_bps": None,
                                 "unresolved": ["downlink: 4,194,304 more bytes took no measurable time"],
                                 "rtt_samples_ms": [0.1, 0.2]},
                  network_source="declared",
                  colocation={"same_host": True, "how": "loopback", "pinned": True, "device_cpus": [0, 1]},
                  split_runner="native", request=request)
    fields.update(kw)
    return SplitPlan(**fields)


def test_a_saved_plan_loads_back_equal_to_itself_request_included(tmp_path):
    plan = _plan()
    path = plan.save(tmp_path / "plan.json")
    back = SplitPlan.load(path)
    assert back == plan
    assert back.request == plan.request and back.request.not_reproducible
    assert isinstance(back.policy[0], tuple) and isinstance(back.candidates, tuple)
    assert SplitPlan.from_json(plan.to_json()) == plan
    # a plan without a request (plan_split called directly, or one saved before the field) reads as None
    bare = _plan(request=None, measured_link=None, colocation=None, declared_link=None)
    data = json.loads(bare.to_json())
    del data["request"]
    assert SplitPlan.from_dict(data) == bare


def test_a_plan_from_a_newer_edgeprobe_is_refused_naming_both_versions():
    data = json.loads(_plan().to_json())
    data["schema_version"] = PLAN_SCHEMA_VERSION + 1
    with pytest.raises(ResultError) as exc:
        SplitPlan.from_dict(data)
    assert str(PLAN_SCHEMA_VERSION + 1) in str(exc.value) and str(PLAN_SCHEMA_VERSION) in str(exc.value)
    assert "upgrade" in str(exc.value)
    for missing in (None, "3", True):
        data["schema_version"] = missing
        with pytest.raises(ResultError, match="schema_version"):
            SplitPlan.from_dict(data)


@pytest.mark.parametrize("corrupt", [
    lambda d: d["chosen"].__setitem__("bytes_up", "many"),
    lambda d: d["candidates"].__setitem__(1, "device-only"),
    lambda d: d["candidates"][0].__setitem__("crossing", "relu_1"),
    lambda d: d["device_only"].pop("label"),
    lambda d: d.__setitem__("cost_sources", ["ETDump"]),
    lambda d: d["declared_link"].__setitem__("rtt_ms", "40ms"),
    lambda d: d["request"].__setitem__("not_reproducible", 3),
    lambda d: d["request"].__setitem__("args", [1, 2]),
    lambda d: d.__setitem__("policy", [[1e6, "device-only", "extra"]]),
    lambda d: d.__setitem__("policy", [["fast", "device-only"]]),
    lambda d: d.__setitem__("policy", [[1e6, 7]]),
    lambda d: d.__setitem__("policy", {"a": 1}),
    lambda d: d.pop("policy"),
    lambda d: d.__setitem__("notes", "one note"),
])
def test_a_wrong_nested_type_is_a_result_error_not_a_type_error(corrupt):
    data = json.loads(_plan().to_json())
    corrupt(data)
    with pytest.raises(ResultError):
        SplitPlan.from_dict(data)


def test_unreadable_plan_files_are_result_errors(tmp_path):
    with pytest.raises(ResultError, match="no split plan file"):
        SplitPlan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ResultError, match="not valid JSON"):
        SplitPlan.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ResultError, match="JSON object"):
        SplitPlan.load(tmp_path / "list.json")


def test_request_is_the_last_field_and_a_plan_without_one_keeps_its_positional_form():
    """CLI tests and callers build SplitPlan positionally up to created_utc; request comes after all."""
    names = [f.name for f in dataclasses.fields(SplitPlan)]
    assert names[-1] == "request" and names.index("created_utc") == 17


def _imports_api(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "edgeprobe.api" or a.name.startswith("edgeprobe.api.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "edgeprobe.api" or node.module.startswith("edgeprobe.api."):
                found.append(f"from {node.module}")
            elif node.module == "edgeprobe" and any(a.name == "api" for a in node.names):
                found.append("from edgeprobe import api")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args \
                and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("edgeprobe.api"):
            found.append(f"__import__({node.args[0].value!r})")
    return found


def test_no_split_module_imports_the_api():
    """The split steps measure through a MeasureSession (edgeprobe.session), not by calling api.bench /
    api.profile / api.export: the API sits above the split package (api.split calls plan_split)."""
    files = sorted(SPLIT_PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    offenders = {str(f.relative_to(SPLIT_PACKAGE)): hits for f in files
                 if (hits := _imports_api(ast.parse(f.read_text(), str(f))))}
    assert offenders == {}
    assert _imports_api(ast.parse("def f():\n    from edgeprobe import api, lower\n"))  # the check sees one


def test_the_split_package_imports_neither_torch_nor_the_api():
    import subprocess
    import sys

    code = ("import sys, edgeprobe.split, edgeprobe.split.record, edgeprobe.split.plan; "
            "bad = [m for m in ('torch', 'edgeprobe.api') if m in sys.modules]; assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
