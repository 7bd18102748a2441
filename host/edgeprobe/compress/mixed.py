"""``int8-mixed``: static int8 that keeps its accuracy, with the most sensitive layers left in fp32.

Plain ``int8`` (the baseline) keeps fp32's top-1 on 85 % of pretrained EfficientNet-Lite0's and 77 % of
Lite1's evaluation crops at ~8 dB SQNR (docs/compression.md, benchmarks/int8_accuracy.py). This recipe:

1. quantizes like ``int8`` (XNNPACK quantizer: per-channel symmetric weights, HistogramObserver
   activations, whose L2-optimal range clips outliers instead of stretching the grid to them) but
   with ReLU6 fused into its conv (``quantize.fuse_relu6_annotations``: the largest single gain);
2. calibrates on the user's data (``Context.calibration``, required: an accuracy recipe never
   calibrates on noise), holding out the last ``holdout`` fraction, which calibration never sees;
3. measures each conv/linear layer's sensitivity: how much the output SQNR (dB, against fp32) gains
   when that layer alone is kept in fp32, on ``probe`` held-out samples;
4. keeps the highest-gain layers in fp32, as few as give ``target`` top-1 agreement with fp32 on the
   held-out split, searched on the fake-quantized graph (the calibrated observers' own scales: a
   proxy for the artifact, cheap enough to try many candidates);
5. checks the target on the lowered .pte itself (ExecuTorch's XNNPACK runtime, whose int8 kernels
   round differently from the reference graph); missed, it keeps more layers in fp32 and checks
   again, up to ``ROUNDS`` times. The step's summary says what was checked on what, and holds the
   per-layer sensitivity table (so it lands in the manifest and the sweep output).

``target=0`` keeps every layer quantized: steps 1-2 only, the "better calibration" int8. ``sqnr=D``
adds a second target, output SQNR >= D dB against fp32 on the held-out split (both must be met): top-1
agreement on a few dozen held-out crops moves in steps of a few percent, SQNR is smoother.

What stays fp32 is a block by default (``group=block``: the module holding the conv, e.g. an
EfficientNet MBConv block), not a single conv: XNNPACK's int8 operators read and write int8, so the
activation between two int8 layers stays int8 whatever else is fp32, and on EfficientNet-Lite that
activation noise, not the weights', is what costs top-1: one conv kept alone gains little (with
single convs as units, 44 of 50 had to stay fp32 for 0.97 on an earlier held-out split of 32 crops).
A block kept whole keeps its inner activations in fp32 too. ``group=layer`` makes the units single
convs/linears. The noise is spread thin: on Lite0 no block alone gains more than about 3 dB.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from edgeprobe.compress import Context, Dataset, Param, Step, recipe
from edgeprobe.errors import UsageError

ROUNDS = 3  # lowered checks before giving up on the target (each lowers and runs the .pte once)
_LAYER_OPS = ("aten.conv2d.default", "aten.linear.default")
_CLAMPS = ("aten.hardtanh.default", "aten.hardtanh_.default", "aten.relu.default", "aten.relu_.default")


def _is_observer(gm: torch.fx.GraphModule, node: Any) -> bool:
    from torchao.quantization.pt2e import ObserverBase

    return (isinstance(node, torch.fx.Node) and node.op == "call_module"
            and isinstance(getattr(gm, str(node.target), None), ObserverBase))


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else node.name
    return path[len("L['self']."):] if path.startswith("L['self'].") else path


def _unit(path: str, group: str) -> str:
    """The module kept in fp32 as one piece: the layer itself, or (``block``) the module holding it."""
    parent = path.rpartition(".")[0]
    return parent if group == "block" and parent else path


def _layers(gm: torch.fx.GraphModule, group: str) -> dict[str, set[str]]:
    """Each unit (a conv/linear layer's module path, or the block holding it) -> the observer nodes its
    layers own: their inputs', weights' and outputs' (after a fused clamp)."""
    layers: dict[str, set[str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or str(node.target) not in _LAYER_OPS or not _is_observer(gm, node.args[1]):
            continue
        owned = {a.name for a in node.args[:2] if _is_observer(gm, a)}
        out = node
        if len(node.users) == 1 and str(next(iter(node.users)).target) in _CLAMPS:
            out = next(iter(node.users))
        owned |= {u.name for u in out.users if _is_observer(gm, u)}
        layers.setdefault(_unit(_module_path(node), group), set()).update(owned)
    return layers


def _quantized_nodes(gm: torch.fx.GraphModule, layers: dict[str, set[str]], kept: set[str]) -> set[str]:
    """Observer nodes that stay when the ``kept`` layers run in fp32: those of no layer (adds, pools)
    and those of at least one quantized layer (a tensor between a quantized and a kept layer stays int8)."""
    owners: dict[str, set[str]] = {}
    for name, nodes in layers.items():
        for n in nodes:
            owners.setdefault(n, set()).add(name)
    return {n.name for n in gm.graph.nodes if _is_observer(gm, n) and not (owners.get(n.name, set()) and
                                                                          owners[n.name] <= kept)}


def _fake_quant_copy(prepared: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """The calibrated graph with each observer node replaced by its own FakeQuantize at the observer's
    scales (torchao's module, switched per node with enable/disable_fake_quant)."""
    from torchao.quantization.pt2e import FakeQuantize

    gm = copy.deepcopy(prepared)
    fqs: dict[str, Any] = {}
    for node in list(gm.graph.nodes):
        if not _is_observer(gm, node):
            continue
        obs = getattr(gm, str(node.target))
        fq = FakeQuantize(observer=lambda obs=obs, **_: obs, quant_min=obs.quant_min, quant_max=obs.quant_max,
                          dtype=obs.dtype)
        fq.disable_observer()
        scale, zero_point = obs.calculate_qparams()
        fq.scale.resize_(scale.shape).copy_(scale)
        fq.zero_point.resize_(zero_point.shape).copy_(zero_point)
        name = f"_mixed_fq_{node.name}"
        gm.add_submodule(name, fq)
        node.target = name
        fqs[node.name] = fq
    gm.recompile()
    return gm, fqs


def _without(prepared: torch.fx.GraphModule, keep: set[str]) -> torch.fx.GraphModule:
    """A copy of the calibrated graph without the observers not in ``keep``, so that ``convert_pt2e``
    leaves those tensors in fp32. (``XNNPACKQuantizer.set_module_name(name, None)`` says the same but
    needs a fresh prepare and calibration per candidate; the search tries several.)"""
    gm = copy.deepcopy(prepared)
    for node in list(gm.graph.nodes):
        if _is_observer(gm, node) and node.name not in keep:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _run(fn: Callable[..., Any], data: Dataset, batch: int, dynamic: bool) -> torch.Tensor:
    """The first output of ``fn`` on ``data`` in batches (a fixed-batch graph: whole batches only)."""
    from edgeprobe.models import flatten_outputs

    outs = []
    with torch.no_grad():
        for i in range(0, len(data) if dynamic else len(data) // batch * batch, batch):
            x = data.x[i:i + batch]
            outs.append(flatten_outputs(fn(x))[0].reshape(x.shape[0], -1).float())
    return torch.cat(outs)


def _agreement(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((ref.argmax(1) == out.argmax(1)).double().mean())


def _split(ctx: Context, holdout: float, samples: int) -> tuple[Dataset, Dataset]:
    data = ctx.calibration
    if data is None:
        raise UsageError("int8-mixed needs calibration data (representative inputs, e.g. --calibration data.npz, "
                         "calibration=tensor or edgeprobe.compress.photos.for_model(...) for ImageNet models): it "
                         "keeps layers in fp32 by their measured effect, which random inputs do not show")
    if not 0.0 < holdout < 1.0:
        raise UsageError(f"int8-mixed: holdout must be between 0 and 1, got {holdout}")
    held = max(1, round(len(data) * holdout))
    if len(data) - held < 1:
        raise UsageError(f"int8-mixed: {len(data)} calibration samples leave none to calibrate on after holding "
                         f"out {held}; pass more")
    cut = len(data) - held
    return Dataset(data.x[:min(cut, samples)]), Dataset(data.x[cut:])


def _check_on_pte(ep: torch.export.ExportedProgram, model: nn.Module, held: Dataset, ctx: Context) -> Any:
    """Lower ``ep`` (XNNPACK .pte, no cache) and score it on the held-out split with its own runtime."""
    from edgeprobe.compress.fidelity import evaluate
    from edgeprobe.lower import lower
    from edgeprobe.models import ModelSpec

    with tempfile.TemporaryDirectory(prefix="edgeprobe-int8-mixed-") as tmp:
        art = lower(ModelSpec(ref="int8-mixed-check", example_inputs=ctx.example_inputs, exported=ep),
                    recipe="int8-mixed-check", quantized=True, use_cache=False, out_dir=Path(tmp))
        return evaluate(art.model_path, model, held, ctx.example_inputs, max_samples=len(held))


@recipe("int8-mixed", "quant", "int8 with ReLU6 fused and histogram calibration; the most sensitive layers stay fp32 "
        "until top-1 agreement with fp32 on held-out calibration data reaches target (checked on the .pte)",
        [Param("target", 0.97, "top-1 agreement with fp32 on the held-out split (0: keep no layer in fp32)"),
         Param("samples", 512, "calibration samples", int),
         Param("holdout", 0.25, "fraction of the calibration data held out to check the target"),
         Param("probe", 8, "held-out samples for the per-layer sensitivity", int),
         Param("group", "block", "what stays fp32 as one piece: block (the module holding a layer) or layer", str),
         Param("sqnr", 0.0, "also required: output SQNR dB vs fp32 on the held-out split (0: not required)")],
        positional="target")
def int8_mixed(model: nn.Module, ctx: Context, target: float, samples: int, holdout: float, probe: int, group: str,
               sqnr: float):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeprobe.compress.fidelity import sqnr_db
    from edgeprobe.compress.quantize import _exported, _reexport, _samples, _xnnpack

    if len(ctx.example_inputs) != 1:
        raise UsageError(f"int8-mixed scores one-input classifiers; this model takes {len(ctx.example_inputs)} inputs")
    min_sqnr_db = sqnr
    if group not in ("block", "layer"):
        raise UsageError(f"int8-mixed: group must be block or layer, got {group!r}")
    cal, held = _split(ctx, holdout, samples)
    notes: list[str] = []
    model = model.eval()
    gm, dynamic = _exported(model, ctx)
    batch = 16 if dynamic else int(ctx.example_inputs[0].shape[0])
    prepared = prepare_pt2e(gm, _xnnpack(get_symmetric_quantization_config(is_per_channel=True), fuse_relu6=True))
    n_cal = 0
    with torch.no_grad():
        for inputs in _samples(dataclasses.replace(ctx, calibration=cal), samples, notes, dynamic):
            prepared(*inputs)
            n_cal += int(inputs[0].shape[0])
    layers = _layers(prepared, group)
    names = list(layers)
    proxy, fqs = _fake_quant_copy(prepared)

    def proxy_outputs(kept: set[str], data: Dataset) -> torch.Tensor:
        on = _quantized_nodes(prepared, layers, kept)
        for name, fq in fqs.items():
            (fq.enable_fake_quant if name in on else fq.disable_fake_quant)()
        return _run(proxy, data, batch, dynamic)

    ref_held = _run(model, held, batch, dynamic)
    n_probe = min(probe, len(held))
    probe_set = Dataset(held.x[:n_probe if dynamic else max(batch, n_probe // batch * batch)])
    ref_probe = ref_held[:len(probe_set)]
    # A layer's sensitivity is what keeping it (alone) in fp32 gains: the output SQNR with every other
    # layer quantized, less the SQNR with all quantized. Keeping a layer in fp32 removes its weight's
    # quantization, and its input's and output's only where no quantized layer shares the tensor (XNNPACK's
    # int8 ops read and write int8), so the layer's own quantization noise ("only this one quantized")
    # would overrate layers whose noise is mostly in an activation they share.
    sensitivity: dict[str, float] = {}
    if target > 0 or min_sqnr_db > 0:
        ctx.log(f"int8-mixed: sensitivity of {len(names)} layers on {len(probe_set)} held-out samples")
        base = sqnr_db(ref_probe, proxy_outputs(set(), probe_set))
        for name in names:  # one forward of the probe set per layer
            sensitivity[name] = sqnr_db(ref_probe, proxy_outputs({name}, probe_set)) - base
    order = sorted(names, key=lambda n: -sensitivity.get(n, -math.inf))

    def meets(agreement: float | None, sqnr: float) -> bool:
        return agreement is not None and agreement >= target and sqnr >= min_sqnr_db

    tried: dict[int, tuple[float, float]] = {}

    def proxy_meets(k: int) -> bool:
        if k not in tried:
            out = proxy_outputs(set(order[:k]), held)
            tried[k] = (_agreement(ref_held, out), sqnr_db(ref_held, out))
        return meets(*tried[k])

    # The first k of 0, 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (all) that meets the target on the proxy.
    # Agreement grows with k but not strictly (rounding errors can cancel): this finds a k, not the least.
    k = 0
    steps = sorted({min(len(order), c) for e in range(16) for c in (2 ** e, 3 * 2 ** e // 2)})
    if (target > 0 or min_sqnr_db > 0) and not proxy_meets(0):
        for k in steps:
            ctx.log(f"int8-mixed: {k} layers in fp32 ...")
            if proxy_meets(k):
                break
    checks: list[dict[str, Any]] = []
    while True:
        kept = set(order[:k])
        ep = _reexport(convert_pt2e(_without(prepared, _quantized_nodes(prepared, layers, kept))), ctx)
        ctx.log(f"int8-mixed: checking {k} layers in fp32 on the lowered .pte")
        fid = _check_on_pte(ep, model, held, ctx)
        checks.append({"kept_fp32": k, "pte_top1_agreement": fid.top1_agreement, "pte_sqnr_db": fid.sqnr_db,
                       "proxy_top1_agreement": tried[k][0] if k in tried else None})
        met = meets(fid.top1_agreement, fid.sqnr_db)
        if met or k >= len(order) or len(checks) >= ROUNDS:
            break
        k = min(len(order), k + max(2, k // 4))
    if not met:
        notes.append(f"TARGET MISSED: top-1 agreement {fid.top1_agreement} (target {target}), SQNR {fid.sqnr_db:.1f} dB "
                     f"(target {min_sqnr_db}) on the lowered .pte (held-out split) with {k} of {len(order)} layers "
                     f"in fp32 after {len(checks)} checks")
    summary = {
        "calibration": "user", "calibration_samples": n_cal, "heldout_samples": len(held),
        "probe_samples": len(probe_set) if sensitivity else 0, "relu6_fused": True,
        "target_top1_agreement": target, "target_sqnr_db": min_sqnr_db, "target_met": met, "layers": len(order), "kept_fp32": k,
        "kept_fp32_layers": order[:k],
        "top1_agreement": fid.top1_agreement, "sqnr_db": fid.sqnr_db,
        "target_checked_on": "the lowered .pte on ExecuTorch's XNNPACK runtime (in-process), held-out split",
        "searched_on": "fake-quantized PT2E graph at the calibrated observers' scales (proxy), held-out split",
        "proxy_top1_agreement": {str(i): a for i, (a, _) in sorted(tried.items())},
        "proxy_sqnr_db": {str(i): q for i, (_, q) in sorted(tried.items())}, "checks": checks,
        "sensitivity_measure": "gain_db: output SQNR (dB, vs fp32) with only this layer kept in fp32, less that "
                               "with every layer quantized (fake-quant proxy, probe samples); higher is more sensitive",
        "group": group, "sensitivity": [{"layer": n, "gain_db": sensitivity.get(n), "fp32": n in set(order[:k])}
                                        for n in order],
    }
    return ep, Step("", {}, summary, tuple(notes))
