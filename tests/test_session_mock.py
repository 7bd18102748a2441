"""The measurement session's logic on the in-package MockTransport: retries, reconnects, run
directories, record errors, deploy-once and hygiene-once, in milliseconds. The same paths over real
peers are in test_bench_local.py, test_tcp_runner.py, test_adb.py and test_hygiene.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgeprobe.devices import Device
from edgeprobe.devices.base import RECONNECT, REMOVE, SHA256, SHELL
from edgeprobe.devices.mock import MockTransport, RecordingHandler, ok_record
from edgeprobe.errors import TransportError, UsageError
from edgeprobe.lower import Artifact
from edgeprobe.results import Manifest
from edgeprobe.session import MeasureConfig, MeasureSession, measure


def _artifact(tmp_path: Path, payload: bytes = b"PTE-bytes", key: str = "k1") -> Artifact:
    d = tmp_path / key
    d.mkdir()
    (d / "model.pte").write_bytes(payload)
    (d / "vectors.epv").write_bytes(b"EPV")
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    m = Manifest(model_ref="m", recipe="fp32", target="executorch", backend="xnnpack", format="pte",
                 artifact_file="model.pte", artifact_sha256=sha(payload), artifact_size_bytes=len(payload),
                 vectors_file="vectors.epv", vectors_sha256=sha(b"EPV"), inputs=(), outputs=(), rtol=1e-3,
                 atol=1e-3, planned_memory_bytes=(), tool_versions={}, cache_key=key, created_utc="now")
    return Artifact(d, m)


def _session(transport: MockTransport, runner: str = "python") -> MeasureSession:
    return MeasureSession(Device("mock:1", transport, runner))


CFG = MeasureConfig(iterations=3, warmup=0)


def test_a_clean_run_gives_the_handlers_record_and_leaves_no_run_files(tmp_path):
    h = RecordingHandler(latencies_ms=(2.0, 1.0, 3.0))
    t = MockTransport(h)
    with _session(t) as s:
        r = s.measure(_artifact(tmp_path), CFG)
    assert r.ok and r.stats.p50_ms == 2.0 and r.device.id == "mock:1"
    argv = h.argvs[0]
    assert argv[0] == "@python" and argv[argv.index("--iterations") + 1] == "3"
    out = argv[argv.index("--output") + 1]
    assert out.startswith("/mock/work/runs/") and out not in t.files  # removed after the pull (remove capability)
    assert not any(p.startswith("/mock/work/runs/") and not p.endswith("/.run") for p in t.files)
    assert t.closed


def test_unchanged_artifact_is_not_pushed_again_and_the_device_is_described_once(tmp_path):
    t = MockTransport(RecordingHandler())
    art = _artifact(tmp_path)
    with _session(t) as s:
        for _ in range(3):
            assert s.measure(art, CFG).ok
        assert s.stats.artifact_pushes == 2 and s.stats.deploys == 1 and s.stats.measurements == 3
    assert t.count("info") == 1
    assert [w for o, w in t.calls if o == "push" and not w.endswith("/.run")] == [
        "/mock/work/k1/model.pte", "/mock/work/k1/vectors.epv"]


def test_a_run_lost_mid_way_is_reconnected_rechecked_and_retried(tmp_path):
    t = MockTransport(RecordingHandler())
    t.fail("run")
    with _session(t) as s:
        r = s.measure(_artifact(tmp_path), CFG)
    assert r.ok and any("run retried after: mock: connection lost during run" in n for n in r.device_state.notes)
    ops = [o for o, _ in t.calls]
    i = ops.index("reconnect")
    assert ops[i + 1] == "sha256" and ops[i + 2] == "run"  # the artifact is re-checked before running again


def test_without_reconnect_a_lost_run_is_an_error_not_a_retry(tmp_path):
    t = MockTransport(RecordingHandler(), capabilities=(SHA256, REMOVE))
    t.fail("run")
    with _session(t) as s, pytest.raises(TransportError, match="failed 1 time.*connection lost"):
        s.measure(_artifact(tmp_path), CFG)
    assert t.count("reconnect") == 0 and t.count("run") == 1


def test_retries_are_bounded(tmp_path):
    t = MockTransport(RecordingHandler())
    t.fail("run", times=5)
    with _session(t) as s, pytest.raises(TransportError, match="failed 3 time"):
        s.measure(_artifact(tmp_path), MeasureConfig(iterations=3, warmup=0, retries=2))
    assert t.count("run") == 3


def test_an_artifact_changed_on_the_device_after_a_reconnect_is_not_run(tmp_path):
    art = _artifact(tmp_path)

    def tamper_then_drop(run):
        t.files["/mock/work/k1/model.pte"] = b"someone else's file"
        raise TransportError("dropped")

    t = MockTransport(tamper_then_drop)
    with _session(t) as s, pytest.raises(TransportError, match="no longer matches its sha256"):
        s.measure(art, CFG)
    assert t.count("run") == 1


def test_a_connection_dropped_while_idle_is_reopened_before_pushing(tmp_path):
    t = MockTransport(RecordingHandler())
    with _session(t) as s:
        assert s.measure(_artifact(tmp_path, key="a"), CFG).ok
        t.fail("push")  # e.g. a TCP runner closed the idle connection while the host was lowering
        assert s.measure(_artifact(tmp_path, b"other", key="b"), CFG).ok
    assert t.count("reconnect") == 1


def test_a_push_that_does_not_arrive_intact_is_refused(tmp_path):
    class Corrupting(MockTransport):
        def push(self, local, remote):
            super().push(local, remote)
            self.files[remote] = self.files[remote][:-1]

    t = Corrupting(RecordingHandler(), capabilities=(SHA256, REMOVE))
    with _session(t) as s, pytest.raises(TransportError, match="does not match its sha256; not running it"):
        s.measure(_artifact(tmp_path), CFG)
    assert t.count("run") == 0


@pytest.mark.parametrize("answer, code", [
    (lambda run: run.ok(), "bad_record"),  # exit 0 but no record written
    (lambda run: run.exit(-9, "Killed\n"), "runner_crashed"),
    (lambda run: run.timed_out("still going\n"), "runner_timeout"),
])
def test_runner_failures_become_error_records_with_the_stderr_tail(tmp_path, answer, code):
    t = MockTransport(answer)
    with _session(t) as s:
        r = s.measure(_artifact(tmp_path), CFG)
    assert not r.ok and r.run.error.code == code and r.stats is None


def test_a_record_of_the_wrong_shape_is_bad_record_not_a_crash(tmp_path):
    def handler(run):
        run.write_record(ok_record(timing={"load_ms": "fast", "first_inference_ms": None, "iteration_ns": []}))
        return run.ok()

    with _session(MockTransport(handler)) as s:
        r = s.measure(_artifact(tmp_path), CFG)
    assert r.run.error.code == "bad_record" and "load_ms" in r.run.error.message


def test_fixed_performance_mode_is_switched_on_once_per_session_and_off_at_close(tmp_path):
    shell_log: list[str] = []

    def shell(cmd: str) -> str:
        shell_log.append(cmd)
        return "rc=0\n" if "fixed-performance" in cmd else ""

    t = MockTransport(RecordingHandler(), capabilities=(SHA256, RECONNECT), shell=shell)
    cfg = MeasureConfig(iterations=3, warmup=0, fixed_performance=True)
    with _session(t) as s:
        states = [s.measure(_artifact(tmp_path, key=f"k{i}", payload=bytes([i])), cfg).device_state
                  for i in range(3)]
    perf = [c for c in shell_log if "fixed-performance" in c]
    assert perf == ["cmd power set-fixed-performance-mode-enabled true 2>&1; echo rc=$?",
                    "cmd power set-fixed-performance-mode-enabled false"]
    assert [st.fixed_performance for st in states] == ["on"] * 3
    assert sum("mkdir -p" in c for c in shell_log) == 3  # run directories through the shell, one per run


def test_one_off_measure_switches_the_performance_mode_off_again(tmp_path):
    shell_log: list[str] = []
    t = MockTransport(RecordingHandler(), shell=lambda c: (shell_log.append(c), "rc=0")[1])
    r = measure(Device("mock:1", t, "python"), _artifact(tmp_path),
                MeasureConfig(iterations=3, warmup=0, fixed_performance=True))
    assert r.ok and shell_log[-1] == "cmd power set-fixed-performance-mode-enabled false"
    assert not t.closed  # the caller's device stays open


def test_a_closed_session_refuses_to_measure(tmp_path):
    s = _session(MockTransport(RecordingHandler()))
    s.close()
    with pytest.raises(UsageError, match="closed"):
        s.measure(_artifact(tmp_path), CFG)


def test_the_mock_declares_what_it_can_and_refuses_the_rest():
    t = MockTransport(RecordingHandler(), capabilities=(REMOVE,))
    assert t.capabilities == frozenset({REMOVE})
    with pytest.raises(TransportError, match="no 'sha256' capability"):
        t.sha256("x")
    with pytest.raises(TransportError, match="no 'shell' capability"):
        t.shell("true")
    with pytest.raises(UsageError, match="unknown capabilities"):
        MockTransport(RecordingHandler(), capabilities=("teleport",))
    with pytest.raises(UsageError, match="needs a shell handler"):
        MockTransport(RecordingHandler(), capabilities=(SHELL,))


def test_every_real_transport_declares_only_known_capabilities_and_implements_them():
    from edgeprobe.devices.adb import AdbTransport
    from edgeprobe.devices.base import CAPABILITIES, TransportBase
    from edgeprobe.devices.local import LocalTransport
    from edgeprobe.devices.tcp import TcpTransport

    for cls in (LocalTransport, AdbTransport, TcpTransport, MockTransport):
        assert issubclass(cls, TransportBase)
        caps = cls.capabilities if cls is not MockTransport else frozenset()
        assert caps <= CAPABILITIES
        for cap in caps:  # a declared capability is a real method, not the base class's refusal
            assert getattr(cls, cap) is not getattr(TransportBase, cap), (cls.__name__, cap)
    assert LocalTransport.capabilities == {SHELL}
    assert AdbTransport.capabilities == {SHELL, SHA256, RECONNECT}
    assert TcpTransport.capabilities == {RECONNECT, REMOVE}


def test_ok_record_parses_as_a_runner_record():
    from edgeprobe.results import RunRecord

    rec = RunRecord.from_runner_json(json.loads(json.dumps(ok_record((1.0, 2.0)))))
    assert rec.status == "ok" and rec.timing.iteration_ns == (1_000_000, 2_000_000)
