"""Pruning recipes: unstructured (``magnitude``, ``taylor``) and structured (``channel``).

- ``magnitude``: global unstructured L1 pruning of every Conv/Linear weight to a target
  ``sparsity`` (``torch.nn.utils.prune.global_unstructured``), or, with ``threshold`` > 0, zeroing
  every weight with ``|w| < threshold``.
- ``taylor``: global unstructured pruning by first-order Taylor importance ``|w * dL/dw|``,
  accumulated over a few batches of the labelled training data (cross-entropy loss).
- ``channel``: structured channel pruning with torch-pruning (L2 magnitude importance, per layer):
  the removed channels are really gone, so the dense model gets fewer parameters and MACs.
  The final classifier layer keeps its outputs.

Unstructured sparsity leaves the tensors dense: XNNPACK's dense kernels multiply the zeros like any
other weight and the .pte stores them, so expect neither a speed-up nor a smaller artifact (the
sweep measures it and the step's note says so). Every recipe takes ``finetune`` (epochs, default 0):
the pruned model is then trained with ``Context.train_fn`` or the built-in loop on ``Context.train``;
for the unstructured recipes the zero mask is kept during fine-tuning (torch's prune
reparametrization stays in place until training is over).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from edgeprobe.compress import Context, Param, Step, count_params, nonzero_params, recipe
from edgeprobe.errors import UsageError

UNSTRUCTURED_NOTE = ("unstructured sparsity: dense kernels (XNNPACK) do not skip zeros; expect no speed-up "
                     "and no size reduction in .pte")

_FINETUNE = Param("finetune", 0, "fine-tune epochs after pruning (needs Context.train or Context.train_fn)", int)


def prunable(model: nn.Module) -> list[nn.Module]:
    """The Conv and Linear layers whose weights the unstructured recipes prune."""
    return [m for m in model.modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(getattr(m, "weight", None), torch.Tensor)]


def _targets(model: nn.Module, name: str) -> list[nn.Module]:
    mods = prunable(model)
    if not mods:
        raise UsageError(f"{name} prunes Conv/Linear weights and this model has none")
    return mods


def _check_fraction(name: str, value: float, what: str) -> None:
    if not 0.0 <= value < 1.0:
        raise UsageError(f"{name}: {what} must be in [0, 1), got {value}")


def _need_finetune_data(name: str, ctx: Context, finetune: int) -> None:
    if finetune < 0:
        raise UsageError(f"{name}: finetune is a number of epochs >= 0, got {finetune}")
    if finetune > 0 and ctx.train_fn is None and (ctx.train is None or ctx.train.y is None):
        raise UsageError(f"{name}: finetune={finetune} needs labelled training data (Context.train with labels, "
                         "e.g. --train-data) or a train function (Context.train_fn)")


def finetune_model(model: nn.Module, ctx: Context, epochs: int) -> str:
    """Fine-tune ``model`` in place; returns how (for the summary)."""
    if ctx.train_fn is not None:
        ctx.log("fine-tuning with the user's train function")
        ctx.train_fn(model, ctx.train)
        model.eval()
        return "train_fn"
    from edgeprobe.compress.data import train_classifier

    assert ctx.train is not None
    ctx.log(f"fine-tuning {epochs} epoch(s) on {len(ctx.train)} samples")
    train_classifier(model, ctx.train, epochs=epochs, lr=1e-3, seed=ctx.seed)
    return f"{epochs} epoch(s), Adam lr=1e-3"


def _sparsity_summary(mods: Iterable[nn.Module], model: nn.Module) -> dict:
    mods = list(mods)
    total = sum(m.weight.numel() for m in mods)
    zeros = sum(int((m.weight == 0).sum()) for m in mods)
    return {
        "sparsity": zeros / total if total else 0.0,
        "pruned_weights": total,
        "zero_weights": zeros,
        "params": count_params(model),
        "nonzero_params": nonzero_params(model),
        "layers": len(mods),
    }


def _finish_unstructured(name: str, model: nn.Module, mods: list[nn.Module], ctx: Context, finetune: int,
                         extra: dict) -> tuple[nn.Module, Step]:
    """Fine-tune with the masks in place, make them permanent, summarize."""
    how: Optional[str] = None
    if finetune > 0:
        how = finetune_model(model, ctx, finetune)
    for m in mods:
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
    summary = {**extra, **_sparsity_summary(mods, model)}
    if how:
        summary["finetune"] = how
    return model.eval(), Step("", {}, summary, (UNSTRUCTURED_NOTE,))


@recipe("magnitude", kind="module",
        help="unstructured global magnitude pruning of Conv/Linear weights (target sparsity or |w| threshold)",
        params=[Param("sparsity", 0.5, "fraction of Conv/Linear weights set to zero"),
                Param("threshold", 0.0, "if > 0: zero every weight with |w| < threshold instead (sparsity ignored)"),
                _FINETUNE],
        positional="sparsity")
def magnitude(model: nn.Module, ctx: Context, sparsity: float = 0.5, threshold: float = 0.0,
              finetune: int = 0) -> tuple[nn.Module, Step]:
    _need_finetune_data("magnitude", ctx, finetune)
    mods = _targets(model, "magnitude")
    if threshold < 0:
        raise UsageError(f"magnitude: threshold must be >= 0, got {threshold}")
    if threshold > 0:
        for m in mods:
            tprune.custom_from_mask(m, "weight", mask=(m.weight.detach().abs() >= threshold))
        extra = {"mode": "threshold", "threshold": threshold}
    else:
        _check_fraction("magnitude", sparsity, "sparsity")
        tprune.global_unstructured([(m, "weight") for m in mods], pruning_method=tprune.L1Unstructured,
                                   amount=float(sparsity))
        extra = {"mode": "sparsity", "target_sparsity": sparsity}
    return _finish_unstructured("magnitude", model, mods, ctx, finetune, extra)


def _taylor_scores(model: nn.Module, mods: list[nn.Module], ctx: Context, batches: int,
                   batch_size: int = 64) -> dict:
    """``sum over batches of |w * dL/dw|`` per weight (cross-entropy on the labelled training data)."""
    data = ctx.train
    assert data is not None and data.y is not None
    was_training = model.training
    model.eval()  # deterministic BatchNorm/Dropout; gradients still flow
    saved = {id(m): m.weight.requires_grad for m in mods}
    for m in mods:
        m.weight.requires_grad_(True)
    scores = {id(m): torch.zeros_like(m.weight, dtype=torch.float32) for m in mods}
    used = 0
    try:
        for x, y in data.batches(batch_size, shuffle=True, seed=ctx.seed):
            if used >= batches:
                break
            model.zero_grad(set_to_none=True)
            out = model(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            nn.functional.cross_entropy(out, y).backward()
            for m in mods:
                if m.weight.grad is not None:
                    scores[id(m)] += (m.weight.detach() * m.weight.grad.detach()).abs().float()
            used += 1
    finally:
        model.zero_grad(set_to_none=True)
        for m in mods:
            m.weight.requires_grad_(saved[id(m)])
        model.train(was_training)
    return {(m, "weight"): scores[id(m)] for m in mods}, used


@recipe("taylor", kind="module",
        help="unstructured global pruning by Taylor importance |w * dL/dw| over a few labelled batches",
        params=[Param("sparsity", 0.5, "fraction of Conv/Linear weights set to zero"),
                Param("batches", 8, "training batches (of 64) the importance is accumulated over", int),
                _FINETUNE],
        positional="sparsity")
def taylor(model: nn.Module, ctx: Context, sparsity: float = 0.5, batches: int = 8,
           finetune: int = 0) -> tuple[nn.Module, Step]:
    if ctx.train is None or ctx.train.y is None:
        raise UsageError("taylor needs labelled training data (Context.train with labels, e.g. --train-data) to "
                         "compute the gradient importance |w * dL/dw|; use magnitude:SPARSITY without data")
    if batches < 1:
        raise UsageError(f"taylor: batches must be >= 1, got {batches}")
    _check_fraction("taylor", sparsity, "sparsity")
    _need_finetune_data("taylor", ctx, finetune)
    mods = _targets(model, "taylor")
    scores, used = _taylor_scores(model, mods, ctx, batches)
    tprune.global_unstructured(list(scores), pruning_method=tprune.L1Unstructured, amount=float(sparsity),
                               importance_scores=scores)
    extra = {"mode": "taylor", "target_sparsity": sparsity, "batches": used}
    return _finish_unstructured("taylor", model, mods, ctx, finetune, extra)


# --- structured ---------------------------------------------------------------------------------


def output_layer(model: nn.Module, example_inputs: tuple) -> Optional[nn.Module]:
    """The Linear/Conv layer that produces the model's output (the classifier), or, failing that, the
    last called Linear whose ``out_features`` equals the output size."""
    called: list[tuple[nn.Module, object]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: called.append((mod, out)))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            out = model.eval()(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if isinstance(out, (tuple, list)):
        out = out[0]
    for mod, o in reversed(called):
        if o is out:
            return mod
    size = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() else None
    for mod, _o in reversed(called):
        if isinstance(mod, nn.Linear) and mod.out_features == size:
            return mod
    return called[-1][0] if called else None


def channel_prune(model: nn.Module, example_inputs: tuple, ratio: float) -> dict:
    """Remove ``ratio`` of the channels of every prunable layer (except the output layer) in place;
    returns params/MACs before and after, as torch-pruning counts them."""
    import torch_pruning as tp

    model.eval()
    head = output_layer(model, example_inputs)
    ignored = [head] if head is not None else []
    macs0, params0 = tp.utils.count_ops_and_params(model, example_inputs)
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=float(ratio), ignored_layers=ignored, global_pruning=False)
    pruner.step()
    model.eval()
    macs1, params1 = tp.utils.count_ops_and_params(model, example_inputs)
    return {
        "params_before": int(params0), "params_after": int(params1),
        "params_ratio": params1 / params0 if params0 else 1.0,
        "macs_before": int(macs0), "macs_after": int(macs1),
        "macs_ratio": macs1 / macs0 if macs0 else 1.0,
        "ignored_layers": [type(m).__name__ for m in ignored],
    }


@recipe("channel", kind="module",
        help="structured channel pruning (torch-pruning, L2 magnitude): the dense model really shrinks",
        params=[Param("ratio", 0.3, "fraction of channels removed from every prunable layer"), _FINETUNE],
        positional="ratio")
def channel(model: nn.Module, ctx: Context, ratio: float = 0.3, finetune: int = 0) -> tuple[nn.Module, Step]:
    _check_fraction("channel", ratio, "ratio")
    _need_finetune_data("channel", ctx, finetune)
    try:
        summary = channel_prune(model, tuple(ctx.example_inputs), ratio)
    except UsageError:
        raise
    except Exception as exc:  # torch-pruning's tracer fails on some graphs: say which step and why
        raise UsageError(f"channel:{ratio}: torch-pruning could not prune this model "
                         f"({type(exc).__name__}: {exc})") from exc
    if finetune > 0:
        summary["finetune"] = finetune_model(model, ctx, finetune)
    return model.eval(), Step("", {}, summary, ())
