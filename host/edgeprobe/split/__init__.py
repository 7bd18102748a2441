"""Split computing: where to cut a model between the device and a server, from measurements.

``plan_split`` (``plan``) measures the device's per-operator costs (ETDump, see ``costs``), the server's
per-operator costs (timed on the server's torch), the exact wire bytes of every tensor in the
chosen encoding (``edgeprobe_runner.codec``) and the per-message framing overhead (measured against
the server when one is given), builds the DADS cost graph and solves it exactly as a minimum s-t
cut (``planner``: ``model``, ``maxflow``, ``memory``). Every cost in the plan is a *prediction* unless
it says measured. The ``confirm`` step times the best heads on the device; with ``verify=True`` each
candidate split is run end to end (``verify``: head on the device runner, activations over the
network, tail on ``edgeprobe serve``, outputs back), and the plan reports the measured e2e latency,
the regret of the chosen cut (chosen / best measured) and each candidate's prediction error. The plan
record (``record``) is saved as JSON and read back with ``SplitPlan.load``.

This module only re-exports; nothing here imports torch.
"""

from edgeprobe.split.colocation import colocation_of, pinned
from edgeprobe.split.link import parse_rate_bps, parse_time_ms
from edgeprobe.split.plan import plan_split
from edgeprobe.split.record import PLAN_SCHEMA_VERSION, CandidateRow, SplitPlan
from edgeprobe.split.verify import _NativeSplit  # noqa: F401 - tests build one around a transport

# the names these had before the package was cut into modules (tests and benchmarks import them)
_colocation = colocation_of
_pinned = pinned

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "CandidateRow",
    "SplitPlan",
    "colocation_of",
    "parse_rate_bps",
    "parse_time_ms",
    "pinned",
    "plan_split",
]
