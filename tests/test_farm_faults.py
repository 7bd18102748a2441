"""Fault classification of farm jobs, from real records (through a real MeasureSession on the mock
transport) and real exceptions; and the table covers every error code the runners can write."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeprobe import errors
from edgeprobe.devices import Device
from edgeprobe.devices.mock import MockTransport, ok_record
from edgeprobe.farm import faults
from edgeprobe.farm.executors import ThreadExecutor
from edgeprobe.session import MeasureConfig, MeasureSession

from test_session_mock import _artifact  # noqa: E402 - the same tiny artifact

REPO = Path(__file__).resolve().parents[1]
CFG = MeasureConfig(iterations=3, warmup=0, retries=0)


def _measure(tmp_path, handler):
    with MeasureSession(Device("mock:1", MockTransport(handler), "python")) as s:
        return s.measure(_artifact(tmp_path), CFG)


def _error_record(code):
    def handler(run):
        run.write_record(ok_record(status="error", error={"code": code, "message": "x"}, timing=None))
        return run.ok()
    return handler


@pytest.mark.parametrize("code, fault", [
    ("output_mismatch", faults.MODEL_ERROR), ("load_failed", faults.MODEL_ERROR),
    ("bad_vectors", faults.MODEL_ERROR), ("internal_error", faults.RUNNER_CRASH),
    ("usage", faults.HOST_ERROR), ("something_new", faults.HOST_ERROR),
])
def test_runner_error_records_are_classified_by_their_code(tmp_path, code, fault):
    assert faults.classify_result(_measure(tmp_path, _error_record(code))) == fault


@pytest.mark.parametrize("answer, fault", [
    (lambda run: run.exit(-11, "Segmentation fault"), faults.RUNNER_CRASH),
    (lambda run: run.timed_out(), faults.TIMEOUT),
    (lambda run: run.ok(), faults.RUNNER_CRASH),  # exit 0, no record: bad_record
])
def test_host_side_failures_are_classified(tmp_path, answer, fault):
    assert faults.classify_result(_measure(tmp_path, answer)) == fault


def test_a_measured_record_has_no_fault(tmp_path):
    def handler(run):
        run.write_record(ok_record())
        return run.ok()
    assert faults.classify_result(_measure(tmp_path, handler)) is None


def test_a_lost_connection_is_device_lost(tmp_path):
    t = MockTransport(lambda run: run.ok())
    t.fail("run")
    with MeasureSession(Device("mock:1", t, "python")) as s, pytest.raises(errors.TransportError) as info:
        s.measure(_artifact(tmp_path), CFG)
    assert faults.classify_exception(info.value) == faults.DEVICE_LOST


@pytest.mark.parametrize("exc, fault", [
    (errors.DeviceNotReadyError("battery at 10 %"), faults.DEVICE_NOT_READY),
    (errors.ConnectionLostError("reset"), faults.DEVICE_LOST),
    (errors.LoweringError("unsupported op"), faults.MODEL_ERROR),
    (errors.ModelNotFoundError("nope"), faults.MODEL_ERROR),
    (errors.RunnerNotBuiltError("build it"), faults.HOST_ERROR),
    (KeyError("a bug"), faults.HOST_ERROR),
])
def test_exceptions_are_classified_by_type(exc, fault):
    assert faults.classify_exception(exc) == fault


def test_every_error_code_a_runner_writes_has_a_class():
    """A new error code in either runner must be classified here, not fall through as host_error."""
    sources = [*sorted((REPO / "device_runner/native").glob("*.cpp")), REPO / "device_runner/edgeprobe_runner/runner.py",
               REPO / "host/edgeprobe/session.py"]
    codes: set[str] = set()
    for path in sources:
        text = path.read_text()
        codes |= set(re.findall(r'(?:error_record|fail|_fail|Fail|Failure|RunError|VectorsError)[({]\s*"([a-z_]+)"', text))
        codes |= set(re.findall(r'"code",?\s*:?\s*"([a-z_]+)"', text))
    codes -= {"ok"}
    assert {"load_failed", "output_mismatch", "runner_crashed", "runner_timeout", "bad_record"} <= codes, codes
    missing = sorted(c for c in codes if c not in faults._RECORD_CODES)
    assert not missing, f"runner error codes without a fault class: {missing}"


def test_policies_follow_the_table():
    assert faults.should_retry_here(faults.RUNNER_CRASH, 1) and not faults.should_retry_here(faults.RUNNER_CRASH, 2)
    assert not faults.should_retry_here(faults.MODEL_ERROR, 1) and not faults.should_retry_here(faults.HOST_ERROR, 1)
    assert faults.POLICIES[faults.DEVICE_LOST].move_to_equivalent
    assert {k for k, p in faults.POLICIES.items() if p.infrastructure} == {faults.DEVICE_LOST, faults.RUNNER_CRASH,
                                                                          faults.TIMEOUT}
    assert set(faults.POLICIES) == set(faults.FAULT_CLASSES)


def test_thread_executor_returns_values_and_reraises():
    ex = ThreadExecutor()
    ok = ex.submit("a", lambda: 42)
    bad = ex.submit("b", lambda: 1 / 0)
    assert ok.result(5) == 42
    with pytest.raises(ZeroDivisionError):
        bad.result(5)
    ex.shutdown()
    assert ok.done() and bad.done()
