"""The regression gate end to end: real ABBA gates on `local` and on the test adbd (a 2x slower
candidate is SLOWER, exit 1; an artifact against itself is never SLOWER), the false-positive rate of
whole gates on identical artifacts, a stored baseline, and the CI outputs (JUnit XML, GitHub
annotations, the Markdown summary); plus the comparison's refusals on records of the mock transport."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from adbd import TestAdbd
from edgeprobe import api
from edgeprobe.devices.mock import MockRun, MockTransport, ok_record
from edgeprobe.devices.registry import Device
from edgeprobe.errors import UsageError
from edgeprobe.gate.annotations import annotations, summary_markdown
from edgeprobe.gate.compare import compare_launches
from edgeprobe.gate.junit import junit_xml
from edgeprobe.session import MeasureConfig, MeasureSession

EP = [sys.executable, "-m", "edgeprobe"]
FAST = {"iterations": 5, "warmup": 1}


@pytest.fixture(scope="module")
def portable_pte(tmp_path_factory):
    """tiny_cnn on ExecuTorch's portable (reference) kernels: several times slower than XNNPACK."""
    return api.export("tiny_cnn", backend="portable")


def _records(artifact, latencies, device_id="mock:1", peak=None):
    """Real BenchResults: each a launch through a MeasureSession on the mock transport."""
    out = []
    for lat in latencies:
        def answer(run: MockRun, lat=lat):
            run.write_record(ok_record(latencies_ms=[lat, lat * 1.01, lat * 0.99], peak_rss_bytes=peak))
            return run.ok()
        with MeasureSession(Device(device_id, MockTransport(answer), "python")) as s:
            out.append(s.measure(artifact, MeasureConfig(iterations=3, warmup=0)))
    return out


def test_a_2x_slower_candidate_fails_the_gate_on_local_with_ci_outputs(tmp_path, tiny_pte, portable_pte,
                                                                        native_runner):
    junit, summary, out = tmp_path / "gate.xml", tmp_path / "summary.md", tmp_path / "gate.json"
    p = subprocess.run([*EP, "gate", "--baseline", str(tiny_pte.dir), "--candidate", str(portable_pte.dir),
                        "--device", "local", "--iterations", "5", "--warmup", "1", "--junit", str(junit),
                        "--summary", str(summary), "--json", str(out), "--annotations"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, (p.stdout[-2000:], p.stderr[-2000:])
    (cell,) = json.loads(out.read_text())
    p50 = next(m for m in cell["metrics"] if m["metric"] == "latency_p50_ms")
    assert cell["outcome"] == "regression" and p50["verdict"] == "SLOWER" and p50["comparison"]["relative_shift"] > 0.5
    assert cell["baseline_launches"] >= 10 and cell["candidate_launches"] >= 10  # ABBA from 10 launches each
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case.find("failure") is not None and " SLOWER" in case.find("failure").get("message") or \
        p50["unstable"]  # an unstable p50 does not fail the cell by itself; memory and size still can
    assert any(line.startswith("::error title=edgeprobe gate%3A tiny_cnn") for line in p.stdout.splitlines())
    assert "❌ regression" in summary.read_text() and "SLOWER" in summary.read_text()


@pytest.mark.real_peer("adb")
def test_the_gate_on_the_test_adbd_catches_the_slow_candidate_and_passes_an_identical_one(
        tmp_path, tiny_pte, portable_pte, native_runner, monkeypatch):
    monkeypatch.setenv("EDGEPROBE_ADB_KEY", str(tmp_path / "keys" / "adbkey"))
    with TestAdbd(tmp_path / "dev") as adbd:
        dev = f"adb:127.0.0.1:{adbd.port}"
        slow = api.gate(tiny_pte, portable_pte, device=dev, **FAST)
        same = api.gate(tiny_pte, tiny_pte, device=dev, **FAST)
    assert slow.comparison.outcome == "regression" and slow.comparison.metric("latency_p50_ms").verdict == "SLOWER"
    assert slow.order[:4] == ("A", "B", "B", "A")
    assert same.comparison.metric("latency_p50_ms").verdict in ("SAME", "UNKNOWN"), same.comparison.reason
    assert same.comparison.outcome != "regression"


def test_the_gate_never_passes_its_launch_cap(tiny_pte):
    """Bimodal launches on both sides stay unstable, so the gate runs to its cap: it stops when
    another whole ABBA round would pass it (7 -> 6 a side), never past it (it ran 8 before)."""
    from edgeprobe.gate.abba import run_gate

    pool = iter(_records(tiny_pte, [1.0, 2.0, 1.0, 2.0] * 10))
    run = run_gate(lambda side: next(pool), min_launches=4, max_launches=7)
    assert not run.decided and run.comparison.outcome == "inconclusive"
    assert sum(x == "B" for x in run.order) == 6 and sum(x == "A" for x in run.order) == 6


def test_false_positive_rate_of_whole_gates_on_identical_artifacts(tiny_pte, native_runner, capsys):
    """20 whole gates, each an artifact against itself on `local` (ABBA from 10 launches each): how
    many call it a regression. At alpha 0.01 with a 5 % floor, the expected rate is about 0."""
    runs = [api.gate(tiny_pte, tiny_pte, device="local", iterations=3, warmup=1, max_launches=16) for _ in range(20)]
    regressions = sum(r.comparison.outcome == "regression" for r in runs)
    verdicts = [r.comparison.metric("latency_p50_ms").verdict for r in runs]
    with capsys.disabled():
        print(f"\ngate false positives on identical artifacts: {regressions}/20; p50 verdicts {verdicts}; "
              f"launches per gate {[len(r.order) for r in runs]}")
    assert regressions <= 1, verdicts


def test_a_stored_baseline_is_not_measured_again(tmp_path, tiny_pte, native_runner):
    base_dir = tmp_path / "baseline"
    base_dir.mkdir()
    for i in range(10):
        api.bench(tiny_pte, device="local", **FAST).save(base_dir / f"launch{i}.json")
    run = api.gate(str(base_dir), tiny_pte, device="local", **FAST)
    assert set(run.order) == {"B"} and len(run.baseline) == 10 and run.comparison.baseline_launches == 10
    assert run.comparison.candidate_launches == len(run.order) >= 10
    # No verdict is asserted: a stored baseline is measured before the candidate, not interleaved with it,
    # so a change of the machine's load between the two phases is a real difference the gate may report
    # (CI saw +32 % on tiny_cnn's ~12 us iterations); the interleaved gates above test the verdicts.


def test_records_of_different_models_or_devices_are_refused_unless_forced(tiny_pte):
    a = _records(tiny_pte, [1.0] * 6, device_id="mock:1")
    b = _records(tiny_pte, [1.0] * 6, device_id="mock:2")
    with pytest.raises(UsageError, match="device: baseline mock:1 vs candidate mock:2"):
        compare_launches(a, b)
    assert compare_launches(a, b, force=True).outcome == "pass"


def test_too_few_launches_is_unknown_with_the_number_needed_and_an_unmeasured_meter_is_unavailable(tiny_pte):
    c = compare_launches(_records(tiny_pte, [1.0, 1.1]), _records(tiny_pte, [2.0, 2.1]))
    p50 = c.metric("latency_p50_ms")
    assert c.outcome == "inconclusive" and p50.verdict == "UNKNOWN" and p50.comparison.needed_n >= 5
    energy = c.metric("energy_mj_per_inference")
    assert energy.verdict == "UNAVAILABLE" and energy.reason.startswith("unavailable: ") and not energy.gating


def test_ci_outputs_escape_and_name_every_cell(tiny_pte):
    slow = compare_launches(_records(tiny_pte, [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.03, 0.97]),
                            _records(tiny_pte, [2.0, 2.02, 1.98, 2.01, 1.99, 2.0, 2.03, 1.97]),
                            baseline_label="a,b:c", candidate_label="50% new\nline")
    same = compare_launches(_records(tiny_pte, [1.0, 1.02, 0.98, 1.01, 0.99, 1.0]),
                            _records(tiny_pte, [1.01, 0.99, 1.0, 1.02, 0.98, 1.0]))
    assert slow.outcome == "regression" and same.outcome == "pass"
    root = ET.fromstring(junit_xml([slow, same]))
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    lines = annotations([slow, same])
    assert len(lines) == 1 and lines[0].startswith("::error title=edgeprobe gate%3A tiny_cnn/fp32 on mock%3A1::")
    (odd,) = annotations([dataclasses.replace(slow, reason="50% slower\nsecond line")])
    assert odd.endswith("::regression: 50%25 slower%0Asecond line")  # workflow-command escaping
    md = summary_markdown([slow, same])
    assert md.count("| tiny_cnn/fp32 on mock:1 |") == 2 and "❌ regression" in md and "✅ pass" in md


def test_a_history_baseline_uses_the_last_farm_runs_of_the_cell_and_is_refused_when_too_short(tmp_path,
                                                                                             native_runner):
    from edgeprobe.farm.db.engine import open_db
    from edgeprobe.farm.inventory import parse_farm
    from edgeprobe.farm.scheduler import run_farm

    url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    db = open_db(url)
    farm = parse_farm('[[device]]\nid = "local"\n\n[matrix]\nmodels = ["tiny_cnn"]\nlaunches = 4\niterations = 5\n'
                      'warmup = 1\n', str(tmp_path / "farm.toml"))
    for night in ("n1", "n2", "n3"):
        assert run_farm(farm, db=db, run_id=night).exit_code == 0
    db.close()
    gate = [*EP, "gate", "--baseline", "history", "--candidate", "tiny_cnn", "--db", url, "--iterations", "5",
            "--warmup", "1", "--json", str(tmp_path / "g.json")]
    p = subprocess.run(gate, capture_output=True, text=True, timeout=600)
    assert p.returncode in (0, 2), (p.stdout[-2000:], p.stderr[-2000:])
    assert "baseline from history: 12 launches of the last 3 farm runs (n1, n2, n3)" in " ".join(p.stderr.split())
    (cell,) = json.loads((tmp_path / "g.json").read_text())
    assert cell["baseline_launches"] == 12 and cell["outcome"] != "regression"
    p = subprocess.run([*gate, "--history-min", "4"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 3 and "baseline missing from history: 3 good farm run(s) of tiny_cnn/fp32/local" in \
        " ".join(p.stderr.split()), p.stderr


def test_the_floor_can_be_set_per_model_and_device(tiny_pte):
    from edgeprobe.gate.compare import floor_for

    rules = ["tiny_cnn=0.08", "*@adb:*=0.2", "resnet18@local=0.01"]
    assert floor_for("tiny_cnn", "local", 0.05, rules) == 0.08
    assert floor_for("tiny_cnn", "adb:1.2.3.4:5555", 0.05, rules) == 0.2  # the last match wins
    assert floor_for("resnet18", "local", 0.05, rules) == 0.01 and floor_for("x", "local", 0.05, rules) == 0.05
    with pytest.raises(UsageError, match="expected PATTERN=FRACTION"):
        floor_for("x", "local", 0.05, ["tiny_cnn=big"])
    base = _records(tiny_pte, [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01])
    cand = _records(tiny_pte, [1.1, 1.11, 1.09, 1.1, 1.12, 1.08, 1.1, 1.11])  # +10 %
    assert compare_launches(base, cand).outcome == "regression"
    assert compare_launches(base, cand, floor_rules=["tiny_cnn@mock:*=0.25"]).metric("latency_p50_ms").verdict == "SAME"
