"""Fault classes of a farm job and the policy for each: what failed, whether to retry it, where,
and whether it counts against the device (towards quarantine).

A job ends in one of: measured (no fault), or a fault class named in its row and its result:

==================  ==========================================  ===============================
class               what                                        policy
==================  ==========================================  ===============================
device_lost         connection dropped, device offline          reconnect and retry on the same
                                                                device, then move the job to an
                                                                equivalent device; device suspect
runner_crash        the runner crashed or left no record        retry once, then failed (stderr
                                                                tail kept)
timeout             the runner ran past its timeout             retry once, then failed
model_error         lowering failed, outputs did not verify,    never retried: the model, not the
                    unsupported operator, bad test vectors      device, is at fault
device_not_ready    battery low, too hot (after the run          retry once here, then requeue on
                    hygiene's own bounded thermal wait)         an equivalent device
host_error          a bug of edgeprobe's (usage record, an      failed, never retried silently
                    unexpected exception)
host_lost           the device's host is gone (a farm on Ray:   never retried on that device:
                    its node died, its actor died, or no live   moved to an equivalent device
                    node offers the device)                     on another host; the device is
                                                                out of the run
==================  ==========================================  ===============================

Infrastructure faults (device_lost, runner_crash, timeout) count towards a device's consecutive
failures; N of them in a row take the device out of the run (``farm/scheduler`` applies it). Classification is
from our error types and the runner's ``error.code`` (device_runner/PROTOCOL.md), never from
message text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from edgeprobe import errors

if TYPE_CHECKING:
    from edgeprobe.results import BenchResult

DEVICE_LOST = "device_lost"
RUNNER_CRASH = "runner_crash"
TIMEOUT = "timeout"
MODEL_ERROR = "model_error"
DEVICE_NOT_READY = "device_not_ready"
HOST_ERROR = "host_error"
HOST_LOST = "host_lost"
FAULT_CLASSES = (DEVICE_LOST, RUNNER_CRASH, TIMEOUT, MODEL_ERROR, DEVICE_NOT_READY, HOST_ERROR, HOST_LOST)


@dataclass(frozen=True)
class Policy:
    retries_same_device: int  # further attempts on the same device after the first
    move_to_equivalent: bool  # then requeue on a device with the same labels
    infrastructure: bool  # counts towards the device's consecutive failures (quarantine)


POLICIES: dict[str, Policy] = {
    DEVICE_LOST: Policy(retries_same_device=1, move_to_equivalent=True, infrastructure=True),
    RUNNER_CRASH: Policy(retries_same_device=1, move_to_equivalent=False, infrastructure=True),
    TIMEOUT: Policy(retries_same_device=1, move_to_equivalent=False, infrastructure=True),
    MODEL_ERROR: Policy(retries_same_device=0, move_to_equivalent=False, infrastructure=False),
    DEVICE_NOT_READY: Policy(retries_same_device=1, move_to_equivalent=True, infrastructure=False),
    HOST_ERROR: Policy(retries_same_device=0, move_to_equivalent=False, infrastructure=False),
    # not the device's fault (no quarantine streak), and nothing can be retried where it was
    HOST_LOST: Policy(retries_same_device=0, move_to_equivalent=True, infrastructure=False),
}

# the runner record's error codes (PROTOCOL.md; session.py adds the three host-side ones)
_RECORD_CODES: dict[str, str] = {
    "load_failed": MODEL_ERROR,
    "output_mismatch": MODEL_ERROR,
    "bad_vectors": MODEL_ERROR,
    "execute_failed": MODEL_ERROR,
    "unsupported": MODEL_ERROR,
    "runner_crashed": RUNNER_CRASH,
    "bad_record": RUNNER_CRASH,
    "internal_error": RUNNER_CRASH,
    "io_failed": RUNNER_CRASH,  # the device could not write the run's files
    "runner_timeout": TIMEOUT,
    "usage": HOST_ERROR,  # we built the runner's arguments: a bad one is our bug
    # split mode (the runner talks to `edgeprobe serve`)
    "connect_failed": DEVICE_LOST,  # the device could not reach the server: the link, retried
    "connection_lost": DEVICE_LOST,
    "server_error": RUNNER_CRASH,  # the server failed the request: retried once
    "encode_failed": MODEL_ERROR,  # the activations cannot be encoded (e.g. not finite for int8)
    "refused": HOST_ERROR,  # a wrong token: configuration, retrying cannot help
    "unauthenticated_server": HOST_ERROR,  # the server did not prove the token: never talked to
    "split_protocol": HOST_ERROR,  # a protocol violation is a bug on one side
}


def classify_result(result: "BenchResult") -> Optional[str]:
    """The fault class of a measurement that came back as a record; None when it was measured.
    An error code this table does not know is a host error (it must be added, not guessed)."""
    if result.ok:
        return None
    code = result.run.error.code if result.run.error is not None else ""
    return _RECORD_CODES.get(code, HOST_ERROR)


def classify_exception(exc: BaseException) -> str:
    """The fault class of an exception raised while preparing or running a job."""
    if isinstance(exc, errors.DeviceNotReadyError):
        return DEVICE_NOT_READY
    if isinstance(exc, errors.HostLostError):
        return HOST_LOST
    if isinstance(exc, (errors.TransportError, errors.DeviceNotFoundError, ConnectionError, TimeoutError)):
        return DEVICE_LOST
    if isinstance(exc, (errors.LoweringError, errors.ArtifactError, errors.ModelNotFoundError,
                        errors.InputShapeError, errors.UnsupportedCombinationError)):
        return MODEL_ERROR
    return HOST_ERROR  # RunnerNotBuiltError, ResultError, any other exception: ours to fix


def should_retry_here(fault: str, attempts_here: int) -> bool:
    """Whether a job that failed with ``fault`` after ``attempts_here`` attempts on this device
    gets another attempt on the same device."""
    return attempts_here <= POLICIES[fault].retries_same_device


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for a job row's error column."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else type(exc).__name__}"
