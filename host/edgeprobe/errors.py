"""Every error edgeprobe raises, in one hierarchy.

Errors of the libraries below (torch.export, executorch, subprocess, OS) are translated into these
at the boundary, with a message that says what to do next::

    EdgeprobeError
    ├── UsageError                      bad input from the user; fix the command
    │   ├── ModelNotFoundError          unknown model name / file / factory
    │   ├── InputShapeError             example input does not fit the model
    │   ├── UnsupportedCombinationError target/backend/format not in the capability table
    │   └── DeviceNotFoundError         unknown device id
    ├── LoweringError                   torch.export / ExecuTorch lowering failed
    ├── ArtifactError                   artifact or manifest missing, corrupt or truncated
    ├── RunnerError                     the device runner could not be used
    │   └── RunnerNotBuiltError         native runner binary missing; says how to build it
    ├── TransportError                  push / pull / run on a device failed
    ├── DeviceNotReadyError             run hygiene failed: battery low, too hot, cores unknown
    └── ResultError                     a result record cannot be read (schema, JSON)

A runner that crashes or hangs during a measurement does not raise: the measurement comes back
as a record with ``status == "error"`` and the runner's stderr tail.
"""

from __future__ import annotations


class EdgeprobeError(Exception):
    """Base of every edgeprobe error."""


class UsageError(EdgeprobeError):
    """The request itself is wrong; the message says how to fix it."""


class ModelNotFoundError(UsageError):
    pass


class InputShapeError(UsageError):
    pass


class UnsupportedCombinationError(UsageError):
    pass


class DeviceNotFoundError(UsageError):
    pass


class LoweringError(EdgeprobeError):
    pass


class ArtifactError(EdgeprobeError):
    pass


class RunnerError(EdgeprobeError):
    pass


class RunnerNotBuiltError(RunnerError):
    pass


class TransportError(EdgeprobeError):
    pass


class ConnectionLostError(TransportError):
    """A connection dropped in the middle of a request (reset, timeout, peer restarted)."""


class DeviceNotReadyError(EdgeprobeError):
    pass


class HostLostError(EdgeprobeError):
    """The host that holds a device is gone for this run: its Ray node died or left the cluster, the
    device's actor died, or no live node offers the device (a farm on Ray: ``farm/executors/ray.py``)."""


class ResultError(EdgeprobeError):
    pass
