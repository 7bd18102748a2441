"""The confirm step: time the compiled heads of the best-predicted splits on the device, and choose again."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from edgeprobe.session import MeasureConfig
from edgeprobe.split.device import DeviceSession, Shared, session_for
from edgeprobe.split.record import CandidateRow

Progress = Callable[[str], None]


def confirm_heads(og, spec, rows: list[CandidateRow], chosen: CandidateRow, device_only_ms: float, k: int,
                  device: str, token: Optional[str], iterations: int, warmup: int, may_switch: bool, say: Progress,
                  *, threads: int = 0, session: Shared = None
                  ) -> tuple[list[CandidateRow], CandidateRow, Optional[str]]:
    """Time the compiled heads of the ``k`` best-predicted splits (and the chosen one) on the device.

    The per-operator device costs are predictions (portable-kernel ETDump times scaled to the XNNPACK
    whole-model p50); this measures each of these heads as lowered (XNNPACK) and run by the runner on
    the device. The device-only row's head is the whole model: the per-node costs were scaled to one
    bench of it (``device_only_ms``), so its prediction equals that bench by construction; it is timed
    again here, in a bench of its own, so that its confirmed total is a second measurement and not the
    first one restated. Cloud-only has no head: nothing to measure (``measured_head_ms`` None, its
    confirmed total is its prediction). Among the confirmed rows the best ``confirmed_total_ms`` is
    chosen (``may_switch``: not under a memory limit, whose choice the confirmation does not re-check).

    Every head is measured through one session on the device (``session``: the plan's; None: one
    opened here, on the first head, and closed after the last)."""
    splits = [r for r in rows if r.kind == "split"]
    picked = {r.device_node_names for r in splits[:k]} | ({chosen.device_node_names} if chosen.kind == "split" else set())
    n_runs = max(iterations, 10)
    with session_for(session, device, token) as device_session:
        out = [_confirm_row(og, spec, r, r.kind == "device-only" or r.device_node_names in picked, device_only_ms,
                            device, device_session, n_runs, warmup, threads, say) for r in rows]
    by_nodes = {r.device_node_names: r for r in out}
    new_chosen = by_nodes.get(chosen.device_node_names, chosen)
    note = None
    confirmed = [r for r in out if r.confirmed_total_ms is not None]
    if may_switch and confirmed and new_chosen.confirmed_total_ms is not None:
        best = min(confirmed, key=lambda r: r.confirmed_total_ms)
        if best.confirmed_total_ms < new_chosen.confirmed_total_ms:
            note = (f"confirmation changed the choice: {new_chosen.label} {new_chosen.confirmed_total_ms:.3f} ms -> "
                    f"{best.label} {best.confirmed_total_ms:.3f} ms with the measured heads")
            new_chosen = best
    return out, new_chosen, note


def _confirm_row(og, spec, r: CandidateRow, picked: bool, device_only_ms: float, device: str,
                 device_session: DeviceSession, n_runs: int, warmup: int, threads: int, say: Progress) -> CandidateRow:
    """One row, confirmed when ``picked`` (its head lowered and timed), else as it was (cloud-only: no head)."""
    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec
    from edgeprobe.split.partition import export_head, split

    measured: Optional[float] = None
    if r.kind == "cloud-only":
        return dataclasses.replace(r, confirmed_total_ms=r.predicted_total_ms, confirm_source=(
            "no head: nothing runs on the device, so there is nothing to time; the confirmed total is the "
            "prediction"))
    if picked:
        say(f"confirming {r.label}: lowering its head and timing it on {device}")
        try:
            s = split(og, spec.example_inputs, set(r.device_node_names))
            art = lower(ModelSpec(f"{spec.ref}-head", s.head_example_inputs, exported=export_head(s)))
            res = device_session.get().measure(art, MeasureConfig(warmup=warmup, iterations=n_runs, threads=threads))
            if not res.ok or res.stats is None:
                raise RuntimeError(res.run.error.message if res.run.error else "no timing")
            measured = res.stats.p50_ms
        except Exception as exc:  # noqa: BLE001 - the row keeps its prediction and says why
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return dataclasses.replace(r, confirm_error=f"{type(exc).__name__}: {msg}")
    if measured is None:
        return r
    src = f"p50 of {n_runs} runs of the head, lowered (XNNPACK) as a program of its own, on {device}"
    if r.kind == "device-only":
        src = (f"p50 of {n_runs} runs of the whole model (the device-only head) in a bench of its own on "
               f"{device}; the per-node costs were scaled to another bench of it ({device_only_ms:.3f} ms), "
               "which is therefore its prediction by construction")
    return dataclasses.replace(r, measured_head_ms=measured, confirm_source=src, confirmed_total_ms=(
        r.predicted_total_ms - r.predicted_device_ms + measured))
