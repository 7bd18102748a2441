"""Quantization recipes on torchao PT2E with ExecuTorch's XNNPACK quantizer.

Each recipe exports the (possibly pruned) eager model, annotates it, calibrates or trains it,
converts it, and returns the re-exported quantized program; the lowering then delegates the
quantized operators to XNNPACK like any other model.

- ``int8``: static, per-channel symmetric weights, per-tensor activations (HistogramObserver),
  calibrated on the user's data (``Context.calibration``); without data on random inputs, with a
  warning recorded in the manifest (random calibration gives activation ranges unrelated to real
  inputs and usually costs accuracy).
- ``int8-dynamic``: activations quantized per inference from their observed range; weights per channel.
- ``int8w`` / ``int4w``: weight-only for Linear layers (activations stay fp32). Weights are stored as
  int8 (int4w: values restricted to [-8, 7], still one byte each: ExecuTorch's
  ``dequantize_per_channel`` reads int8, so the .pte saves 4x, not 8x) and dequantized at run time
  by ExecuTorch's quantized kernels; the Linear then runs in fp32. torchao's ``IntxWeightOnlyConfig``
  was tried first: lowered to XNNPACK it gave wrong outputs (max error 1e5 on the digits CNN with
  torchao 0.18 / executorch 1.5.1), so the PT2E weight-only annotation here is used instead.
- ``qat``: PT2E quantization-aware training (fake-quant in the graph) driven by the user's
  ``Context.train_fn`` or, with labelled ``Context.train``, the built-in loop; then converted like int8.
- ``pow2``: int8 with every scale rounded up to a power of two, Q(x) = round(x / 2^k) * 2^k, so that
  requantization is a shift; symmetric activations (zero point 0).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from edgeprobe.compress import Context, Dataset, Param, Step, recipe
from edgeprobe.errors import UsageError

RANDOM_CALIBRATION_WARNING = ("CALIBRATED ON RANDOM INPUTS: no calibration data was given, so activation ranges "
                              "come from uniform noise; accuracy of this artifact is not representative. Pass "
                              "calibration data (tensors, .npz or a dataset callable)")


# TFLite's post-training quantization guide asks for a representative dataset of "around 100-500 samples".
MIN_CALIBRATION_SAMPLES = 100


def _quantized_ops_registered() -> None:
    """The out-variants of quantized_decomposed ops (dequantize_per_channel ...) for EXIR."""
    import executorch.kernels.quantized  # noqa: F401


def _exported(model: nn.Module, ctx: Context) -> tuple[torch.fx.GraphModule, bool]:
    """The graph to annotate, with a dynamic batch dimension when the model allows it (so that
    calibration and QAT run on real batches); else the example inputs' fixed batch."""
    from torch.export import Dim

    if all(x.dim() > 0 for x in ctx.example_inputs):
        batch = Dim("batch", min=1, max=4096)
        wide = tuple(x[:1].expand(2, *x.shape[1:]).clone() for x in ctx.example_inputs)  # 1 would be specialized
        try:
            with torch.no_grad():
                return torch.export.export(model, wide, dynamic_shapes=tuple({0: batch} for _ in wide),
                                           strict=False).module(), True
        except Exception as exc:  # noqa: BLE001 - batch-dependent reshapes etc.
            ctx.log(f"exporting with a dynamic batch failed ({type(exc).__name__}); calibrating one batch at a time")
    with torch.no_grad():
        return torch.export.export(model, ctx.example_inputs, strict=False).module(), False


def _reexport(gm: torch.fx.GraphModule, ctx: Context) -> torch.export.ExportedProgram:
    _quantized_ops_registered()
    return torch.export.export(gm, ctx.example_inputs, strict=False)


def _samples(ctx: Context, samples: int, notes: list[str], dynamic: bool = False):
    """Calibration inputs: batches of 32 on a dynamic-batch graph, else the example inputs' batch."""
    batch = 32 if dynamic else (int(ctx.example_inputs[0].shape[0]) if ctx.example_inputs[0].dim() else 1)
    data = ctx.calibration
    if data is None:
        ctx.log(f"WARNING: {RANDOM_CALIBRATION_WARNING}")
        notes.append(RANDOM_CALIBRATION_WARNING)
        g = torch.Generator().manual_seed(ctx.seed)
        for _ in range(max(1, min(samples, 32))):
            yield tuple(torch.rand(x.shape, generator=g, dtype=x.dtype) if x.is_floating_point() else x
                        for x in ctx.example_inputs)
        return
    if len(ctx.example_inputs) != 1:
        raise UsageError("calibration data holds one input tensor; this model takes "
                         f"{len(ctx.example_inputs)} inputs")
    want = tuple(ctx.example_inputs[0].shape[1:])
    if tuple(data.x.shape[1:]) != want:
        raise UsageError(f"calibration data has samples of shape {tuple(data.x.shape[1:])}; the model takes {want}")
    n = min(samples, len(data))
    if not dynamic:
        n = n // batch * batch
    if n == 0:
        raise UsageError(f"calibration data has {len(data)} samples; need at least {batch}")
    if n < MIN_CALIBRATION_SAMPLES:
        warning = (f"FEW CALIBRATION SAMPLES: {n} (fewer than {MIN_CALIBRATION_SAMPLES}); activation ranges may "
                   "miss what real inputs reach. Pass more calibration data")
        ctx.log(f"WARNING: {warning}")
        notes.append(warning)
    for i in range(0, n, batch):
        yield (data.x[i:i + batch].to(ctx.example_inputs[0].dtype),)


def _xnnpack(config, fuse_relu6: bool = False) -> Any:
    """ExecuTorch's XNNPACK quantizer over ``config``; ``fuse_relu6``: also fuse ReLU6 into its conv/linear."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    if not fuse_relu6:
        return XNNPACKQuantizer().set_global(config)

    class ReLU6FusingQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return fuse_relu6_annotations(super().annotate(model))

    return ReLU6FusingQuantizer().set_global(config)


def fuse_relu6_annotations(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Quantize conv/linear -> ReLU6 (hardtanh 0..6) at the ReLU6's output, not between the two.

    The XNNPACK quantizer fuses conv+ReLU but not conv+ReLU6: it quantizes the conv's raw output and
    lets the ReLU6 share that observer, so the clamped [0, 6] activation gets the pre-activation's int8
    grid (often tens of units wide). On pretrained EfficientNet-Lite0 (ReLU6 after 33 of its 49 convs),
    scored on skimage photos as a .pte (benchmarks/int8_accuracy.py): plain int8 7.6 dB SQNR and 85 %
    top-1 agreement with fp32, int8-mixed:target=0 (this fusion, all layers int8) 19.7 dB and 94 %.
    XNNPACK itself runs conv -> hardtanh -> quantize as one operator with a fused output clamp (its
    partitioner's ``fused_acts``), so the annotation is the only
    missing piece; no quantizer in executorch 1.5 / torchao 0.18 annotates it, hence this function."""
    hardtanh = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
    producers = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
    key = "quantization_annotation"
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in hardtanh or key not in node.meta:
            continue
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        prev = node.args[0]
        if (float(lo), float(hi)) != (0.0, 6.0) or not isinstance(prev, torch.fx.Node) or len(prev.users) != 1:
            continue
        if prev.op != "call_function" or prev.target not in producers or key not in prev.meta:
            continue
        out_spec = prev.meta[key].output_qspec
        if out_spec is None:
            continue
        prev.meta[key].output_qspec = None
        node.meta[key].input_qspec_map = {}
        node.meta[key].output_qspec = out_spec
    return gm


def _ptq(model: nn.Module, ctx: Context, quantizer, samples: int, calibrate: bool = True) -> tuple[Any, Step]:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    notes: list[str] = []
    gm, dynamic = _exported(model.eval(), ctx)
    prepared = prepare_pt2e(gm, quantizer)
    n = 0
    with torch.no_grad():
        for inputs in (_samples(ctx, samples, notes, dynamic) if calibrate else [ctx.example_inputs]):
            prepared(*inputs)
            n += int(inputs[0].shape[0])
    converted = convert_pt2e(prepared)
    summary = {"calibration_samples": n if calibrate else 0,
               "calibration": "random" if (calibrate and ctx.calibration is None) else ("user" if calibrate else "none")}
    return _reexport(converted, ctx), Step("", {}, summary, tuple(notes))


@recipe("int8", "quant", "static int8 (per-channel weights, calibrated activations), XNNPACK",
        [Param("samples", 256, "calibration samples", int), Param("per_channel", True, "per-channel weights", bool)])
def int8(model: nn.Module, ctx: Context, samples: int, per_channel: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    return _ptq(model, ctx, _xnnpack(get_symmetric_quantization_config(is_per_channel=per_channel)), samples)


@recipe("int8-dynamic", "quant", "dynamic int8 activations, per-channel int8 weights, XNNPACK")
def int8_dynamic(model: nn.Module, ctx: Context):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    cfg = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    return _ptq(model, ctx, _xnnpack(cfg), 0, calibrate=False)


class _WeightOnlyLinear:
    """PT2E quantizer annotating only the weights of aten.linear (per output channel, symmetric)."""

    def __new__(cls, qmin: int, qmax: int):
        from torchao.quantization.pt2e import PerChannelMinMaxObserver
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

        spec = QuantizationSpec(dtype=torch.int8, quant_min=qmin, quant_max=qmax, qscheme=torch.per_channel_symmetric,
                                ch_axis=0, is_dynamic=False,
                                observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=2 ** -12))

        class WeightOnlyLinearQuantizer(Quantizer):
            def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
                for node in model.graph.nodes:
                    if node.op == "call_function" and node.target == torch.ops.aten.linear.default:
                        node.meta["quantization_annotation"] = QuantizationAnnotation(
                            input_qspec_map={node.args[1]: spec}, _annotated=True)
                return model

            def validate(self, model: torch.fx.GraphModule) -> None:
                pass

        return WeightOnlyLinearQuantizer()


def _weight_only(model: nn.Module, ctx: Context, bits: int):
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise UsageError(f"int{bits}w quantizes Linear weights and this model has no nn.Linear")
    qmax = 2 ** (bits - 1) - 1
    ep, step = _ptq(model, ctx, _WeightOnlyLinear(-qmax - 1 if bits < 8 else -qmax, qmax), 0, calibrate=False)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    notes = ["weights stored as int8 and dequantized at run time by ExecuTorch's quantized kernels; the Linear "
             "layers run in fp32 (portable/optimized kernels, not XNNPACK)"]
    if bits < 8:
        notes.append("int4 values are stored one per byte (no packing): the .pte saves what int8 saves")
    return ep, Step("", {}, {"quantized_weights": linear, "bits": bits}, tuple(notes))


@recipe("int8w", "quant", "weight-only int8 for Linear layers (activations fp32)")
def int8w(model: nn.Module, ctx: Context):
    return _weight_only(model, ctx, 8)


@recipe("int4w", "quant", "weight-only int4 (range -8..7, stored in int8) for Linear layers")
def int4w(model: nn.Module, ctx: Context):
    return _weight_only(model, ctx, 4)


@recipe("qat", "quant", "PT2E quantization-aware training (int8), with Context.train_fn or labelled data",
        [Param("epochs", 3, "epochs of the built-in loop", int), Param("lr", 1e-3, "learning rate")])
def qat(model: nn.Module, ctx: Context, epochs: int, lr: float):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    if ctx.train_fn is None and (ctx.train is None or ctx.train.y is None):
        raise UsageError("qat needs a train function (Context.train_fn) or labelled training data")
    gm, dynamic = _exported(model.train(), ctx)
    prepared = prepare_qat_pt2e(gm, _xnnpack(get_symmetric_quantization_config(is_per_channel=True, is_qat=True)))
    move_exported_model_to_train(prepared)
    batch = 64 if dynamic else int(ctx.example_inputs[0].shape[0])
    if ctx.train_fn is not None:
        ctx.train_fn(prepared, ctx.train)
        how = "user train_fn"
    else:
        # The exported graph fixes the batch size: train on batches of that size.
        from edgeprobe.compress.data import train_classifier

        train_classifier(_BatchOf(prepared, None if dynamic else batch), ctx.train, epochs=epochs, lr=lr,
                         batch_size=batch if dynamic else batch * 16, seed=ctx.seed)
        how = f"built-in loop, {epochs} epochs"
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    return _reexport(converted, ctx), Step("", {}, {"training": how}, ())


class _BatchOf(nn.Module):
    """The QAT graph as a module for the training loop: exported graphs refuse .train()/.eval()
    (torchao switches them with move_exported_model_to_*), and a fixed-batch graph is fed in slices."""

    def __init__(self, gm: torch.fx.GraphModule, batch: Optional[int]) -> None:
        super().__init__()
        self.gm, self.batch = gm, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None:
            return self.gm(x)
        n = x.shape[0] // self.batch * self.batch
        return torch.cat([self.gm(x[i:i + self.batch]) for i in range(0, max(n, self.batch), self.batch)])

    def train(self, mode: bool = True):  # the exported graph switches with move_exported_model_to_*
        return self

    def eval(self):
        return self


def _pow2_observers():
    from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver

    def pow2(scale: torch.Tensor) -> torch.Tensor:
        return torch.exp2(torch.ceil(torch.log2(scale)))

    class Pow2MinMaxObserver(MinMaxObserver):
        def calculate_qparams(self):
            scale, zero_point = super().calculate_qparams()
            return pow2(scale), torch.zeros_like(zero_point)

    class Pow2PerChannelMinMaxObserver(PerChannelMinMaxObserver):
        def calculate_qparams(self):
            scale, zero_point = super().calculate_qparams()
            return pow2(scale), torch.zeros_like(zero_point)

    return Pow2MinMaxObserver, Pow2PerChannelMinMaxObserver


@recipe("pow2", "quant", "static int8 with power-of-two scales (Q(x) = round(x/2^k)*2^k), symmetric",
        [Param("samples", 256, "calibration samples", int)])
def pow2(model: nn.Module, ctx: Context, samples: int):
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    act_obs, w_obs = _pow2_observers()
    act = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                           is_dynamic=False, observer_or_fake_quant_ctr=act_obs.with_args(eps=2 ** -12))
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=w_obs.with_args(eps=2 ** -12))
    ep, step = _ptq(model, ctx, _xnnpack(QuantizationConfig(act, act, weight, None, False)), samples)
    scales = _scales(ep)
    off = [s for s in scales if not math.isclose(math.log2(s), round(math.log2(s)), abs_tol=1e-6)]
    if off:
        raise RuntimeError(f"pow2: {len(off)} of {len(scales)} scales are not powers of two (e.g. {off[0]})")
    summary = {**step.summary, "scales": len(scales),
               "exponents": sorted({int(round(math.log2(s))) for s in scales})}
    return ep, Step("", {}, summary, step.notes)


def _scales(ep: torch.export.ExportedProgram) -> list[float]:
    """Every quantization scale in the program (constants and per-channel scale tensors)."""
    out: list[float] = []
    consts = {**dict(ep.named_buffers()), **dict(ep.named_parameters()), **ep.constants}
    sig = ep.graph_signature
    names = {**sig.inputs_to_buffers, **sig.inputs_to_parameters, **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    for node in ep.graph.nodes:
        if node.op != "call_function" or "quantize_per" not in str(node.target):
            continue
        scale = node.args[1]
        if isinstance(scale, float):
            out.append(scale)
        elif isinstance(scale, torch.fx.Node):
            t = consts.get(names.get(scale.name, scale.name))
            if isinstance(t, torch.Tensor):
                out.extend(float(v) for v in t.flatten())
    return out


def is_calibrated_randomly(steps) -> bool:
    return any(RANDOM_CALIBRATION_WARNING in n for s in steps for n in s.notes)


__all__ = ["RANDOM_CALIBRATION_WARNING", "Dataset", "is_calibrated_randomly"]
