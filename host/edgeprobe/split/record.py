"""The split plan record: its rows, its JSON form, and reading a saved plan back (``SplitPlan.load``)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from edgeprobe.errors import ResultError
from edgeprobe.request import Request
from edgeprobe.results import from_dict
from edgeprobe.serde import parse_json, read_text_file

PLAN_SCHEMA_VERSION = 3  # 3: confirm_source, declared/measured link, network_source, colocation, split_runner;
# per_message_overhead_bytes/request_overhead_ms null when not measured (no server). 2: measured_head_ms/
# confirmed_total_ms/confirm_error, packet_overhead_bytes, framing per message.
# ``request`` (the command and arguments that made the plan) was added without a bump: it is one more
# key, which every reader of version 3 skips (``results.from_dict`` reads the fields it knows), and a plan
# without it reads back with ``request`` None.


@dataclass(frozen=True)
class CandidateRow:
    label: str  # device-only | cloud-only | after NODE (the last device node in graph order)
    kind: str
    device_nodes: int
    crossing: tuple[str, ...]
    bytes_up: int
    predicted_device_ms: float
    predicted_uplink_ms: float
    predicted_server_ms: float
    predicted_downlink_ms: float
    predicted_rtt_ms: float
    predicted_total_ms: float
    measured_e2e_p50_ms: Optional[float] = None  # verify: end to end, head on the device
    measured_e2e_p90_ms: Optional[float] = None
    prediction_error: Optional[float] = None  # (predicted - measured) / measured
    sqnr_db: Optional[float] = None  # final outputs vs the unsplit model (verify)
    error: Optional[str] = None
    device_node_names: tuple[str, ...] = ()
    predicted_overhead_ms: float = 0.0  # per-request software time (measured), part of predicted_total_ms
    measured_head_ms: Optional[float] = None  # confirm: the compiled (XNNPACK) head's p50 on the device
    confirmed_total_ms: Optional[float] = None  # predicted total with the measured head in place of its prediction
    confirm_error: Optional[str] = None  # why the head could not be timed (the row keeps its prediction)
    confirm_source: Optional[str] = None  # where measured_head_ms comes from, or why there is none (cloud-only)


@dataclass(frozen=True)
class SplitPlan:
    model_ref: str
    device: str
    server: Optional[str]
    uplink_bps: float
    downlink_bps: float
    rtt_ms: float
    encoding: str
    objective: str
    per_message_overhead_bytes: Optional[int]  # measured against the server; None without one (not in the model)
    packet_overhead_bytes: int
    request_overhead_ms: Optional[float]  # measured (echo through the server); None without one
    chosen: CandidateRow
    device_only: CandidateRow
    cloud_only: CandidateRow
    candidates: tuple[CandidateRow, ...]
    policy: tuple[tuple[float, str], ...]  # (uplink bps from which the decision holds, label)
    cost_sources: dict[str, str]
    created_utc: str
    regret: Optional[float] = None  # verify: chosen measured / best measured
    best_measured: Optional[str] = None
    median_abs_prediction_error: Optional[float] = None
    notes: tuple[str, ...] = ()
    # the link as the user declared it (--uplink/--downlink/--rtt) and as probed over the device's path to
    # the server (None without a server); network_source says which of the two the plan used
    declared_link: Optional[dict[str, float]] = None
    measured_link: Optional[dict[str, Any]] = None
    network_source: str = "declared"
    colocation: Optional[dict[str, Any]] = None  # whether device half and server share this host's CPUs, and the pinning
    split_runner: Optional[str] = None  # what ran the device half in verify (native | python)
    schema_version: int = PLAN_SCHEMA_VERSION
    request: Optional[Request] = None  # the command and every argument that produced this plan (api.split)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (temp file beside it, fsync, rename): a kill leaves the old file or this one."""
        from edgeprobe.fsutil import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n", fault="plan-save")

    @classmethod
    def from_dict(cls, data: Any) -> "SplitPlan":
        """A plan from its JSON data, every field type-checked (``ResultError`` names the first bad one).
        A plan written by a newer edgeprobe (a higher ``schema_version``) is refused: its fields may mean
        something this reader does not know."""
        if not isinstance(data, dict):
            raise ResultError(f"a split plan is a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ResultError(f"the split plan has no valid schema_version (got {str(version)[:40]!r}); "
                              f"this edgeprobe reads split plans up to version {PLAN_SCHEMA_VERSION}")
        if version > PLAN_SCHEMA_VERSION:
            raise ResultError(f"the split plan has schema_version {version}; this edgeprobe reads split plans up to "
                              f"version {PLAN_SCHEMA_VERSION}: upgrade edgeprobe to read it")
        # ``policy`` is a list of (bandwidth, label) pairs; results.from_dict converts a tuple's items with
        # one type, so the pairs are checked here and the rest goes through from_dict
        policy = _policy(data.get("policy"))
        plan = from_dict(cls, {**data, "policy": []})
        return dataclasses.replace(plan, policy=policy)

    @classmethod
    def from_json(cls, text: str) -> "SplitPlan":
        return cls.from_dict(parse_json(text, "the split plan"))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SplitPlan":
        """Read a plan saved by ``save`` (or ``edgeprobe split --json``)."""
        return cls.from_json(read_text_file(path, "split plan"))


def _policy(value: Any) -> tuple[tuple[float, str], ...]:
    if value is None:
        raise ResultError("SplitPlan: missing field 'policy'")
    if not isinstance(value, list):
        raise ResultError(f"SplitPlan.policy: expected a list, got {type(value).__name__}")
    out = []
    for i, entry in enumerate(value):
        where = f"SplitPlan.policy[{i}]"
        if not isinstance(entry, list) or len(entry) != 2:
            raise ResultError(f"{where}: expected a [bandwidth, label] pair, got {str(entry)[:60]}")
        bw, label = entry
        if isinstance(bw, bool) or not isinstance(bw, (int, float)) or not math.isfinite(bw):
            raise ResultError(f"{where}: the bandwidth must be a finite number, got {str(bw)[:60]!r}")
        if not isinstance(label, str):
            raise ResultError(f"{where}: the label must be a string, got {str(label)[:60]!r}")
        out.append((float(bw), label))
    return tuple(out)
