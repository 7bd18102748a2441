"""Compression recipes: quantization, pruning, distillation, low-rank, weight clustering.

A recipe string is one or more steps joined by ``+``, each ``name`` or ``name:value`` or
``name:key=value,key=value`` (``channel:0.3+int8``, ``magnitude:sparsity=0.5``, ``distill:T=4,alpha=0.7``).
Module steps (pruning, distillation, low-rank, clustering) run first, in the order given, on an eager
copy of the fp32 model; a quantization step (at most one) must come last: it turns the model into a
PT2E-quantized graph that is lowered like any other. Every step returns a :class:`Step` that records
what it did; the steps go into the artifact's manifest (``compression``).

A lowering target may carry out the last step itself, in its own toolchain (its module's ``RECIPES``:
NNCF int8 for OpenVINO, XNNPACK fp16 for ExecuTorch): ``apply_and_lower`` then applies the module steps
here and hands that step, with the calibration data, to the lowering (``lower.TargetRecipe``). A
recipe of kind ``target`` exists only that way.

Each recipe module registers its recipes in :data:`RECIPES` through :func:`recipe`; :data:`CATALOG`
describes the same recipes without importing them (or torch), for ``edgeprobe recipes``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from edgeprobe.errors import UnsupportedCombinationError, UsageError

if TYPE_CHECKING:  # torch is imported where a recipe runs, not to list or parse recipes
    import torch
    from torch import nn

    Inputs = tuple[torch.Tensor, ...]


def __getattr__(name: str) -> Any:
    """``Inputs`` (and the ``torch``/``nn`` this module once imported at the top) on first use."""
    if name in ("torch", "nn", "Inputs"):
        import torch
        from torch import nn

        return {"torch": torch, "nn": nn, "Inputs": tuple[torch.Tensor, ...]}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    help: str
    kind: type = float


@dataclass(frozen=True)
class RecipeDef:
    name: str
    kind: str  # "module" (eager nn.Module -> nn.Module) | "quant" (-> PT2E graph, must be last)
    #           | "target" (carried out by the lowering target, must be last)
    help: str
    params: tuple[Param, ...]
    fn: Callable[..., tuple[Any, "Step"]]
    positional: Optional[str] = None  # the parameter `name:value` sets

    def usage(self) -> str:
        ps = ", ".join(f"{p.name}={p.default}" for p in self.params)
        return f"{self.name}" + (f"[:{ps}]" if ps else "") + f"  {self.help}"


RECIPES: dict[str, RecipeDef] = {}


def recipe(name: str, kind: str, help: str, params: Sequence[Param] = (), positional: Optional[str] = None):
    """Register ``fn(model, ctx, **params) -> (model, Step)`` as recipe ``name``."""

    def deco(fn):
        RECIPES[name] = RecipeDef(name, kind, help, tuple(params), fn, positional)
        return fn

    return deco


@dataclass(frozen=True)
class Step:
    """What one recipe step did: recorded in the manifest and the sweep table."""

    recipe: str
    params: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)  # e.g. sparsity, params before/after
    notes: tuple[str, ...] = ()


@dataclass
class Dataset:
    """Labelled (or unlabelled: ``y`` None) samples, batch-first tensors."""

    x: torch.Tensor
    y: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        import torch

        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle \
            else torch.arange(len(self))
        for i in range(0, len(self), batch_size):
            j = idx[i:i + batch_size]
            yield self.x[j], (self.y[j] if self.y is not None else None)


@dataclass
class Context:
    """What recipes may use besides the model.

    ``calibration``: input batches for static quantization (``None``: random inputs, with a loud
    warning recorded in the manifest). ``train``: labelled data for Taylor importance, fine-tuning,
    distillation and QAT. ``train_fn(model, data)`` replaces the built-in training loop (fine-tune,
    QAT); ``student``: the distillation student (default: a width-scaled copy of the teacher).
    """

    example_inputs: Inputs
    calibration: Optional[Dataset] = None
    train: Optional[Dataset] = None
    train_fn: Optional[Callable[[nn.Module, Optional[Dataset]], None]] = None
    student: Optional[nn.Module] = None
    log: Callable[[str], None] = lambda _m: None
    seed: int = 0


@dataclass(frozen=True)
class ParsedStep:
    name: str
    params: dict[str, Any]

    def __str__(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.params.items()) if self.params else "")


def _load_all() -> None:
    from edgeprobe.compress import distill, factorize, precision, prune, quantize, mixed  # noqa: F401 - registration


def _no_fn(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("a CATALOG entry is a description; the recipe runs from RECIPES (_load_all)")


_FINETUNE = Param("finetune", 0, "epochs of fine-tuning after pruning (needs labelled data)", int)
# What `edgeprobe recipes` lists without importing the recipe modules (and torch): the same name, kind,
# parameters and help as each module's @recipe, in _load_all's order (tests/test_import_cost.py checks it).
CATALOG: dict[str, RecipeDef] = {r.name: r for r in (
    RecipeDef("distill", "module", "knowledge distillation into a smaller student (given, or a width-scaled copy "
              "of the teacher)", (Param("T", 4.0, ""), Param("alpha", 0.7, ""), Param("width", 0.5, ""),
                                  Param("epochs", 15, "", int), Param("lr", 1e-2, "")), _no_fn),
    RecipeDef("lowrank", "module", "SVD factorization of Linear/Conv2d weights (rank < 1: fraction of each layer's "
              "full rank; >= 1: absolute rank); a layer is replaced only when that saves parameters",
              (Param("rank", 0.5, ""), Param("min_saving", 0.0, "")), _no_fn, "rank"),
    RecipeDef("cluster", "module", "k-means weight sharing: each Conv/Linear weight snapped to k shared values per "
              "layer (the .pte stays fp32; storage_bytes_if_packed is computed)", (Param("k", 16, "", int),), _no_fn, "k"),
    RecipeDef("fp16", "target", "XNNPACK fp16 (fp32 inputs/outputs; fp32 accumulation on x86, native fp16 on "
              "ARMv8.2+), carried out by the ExecuTorch lowering (--format pte --backend xnnpack)", (), _no_fn),
    RecipeDef("magnitude", "module", "unstructured global magnitude pruning of Conv/Linear weights (target sparsity "
              "or |w| threshold)", (Param("sparsity", 0.5, ""), Param("threshold", 0.0, ""), _FINETUNE), _no_fn,
              "sparsity"),
    RecipeDef("taylor", "module", "unstructured global pruning by Taylor importance |w * dL/dw| over a few labelled "
              "batches", (Param("sparsity", 0.5, ""), Param("batches", 8, "", int), _FINETUNE), _no_fn,
              "sparsity"),
    RecipeDef("channel", "module", "structured channel pruning (torch-pruning, L2 magnitude): the dense model "
              "really shrinks", (Param("ratio", 0.3, ""), _FINETUNE), _no_fn, "ratio"),
    RecipeDef("int8", "quant", "static int8 (per-channel weights, calibrated activations), XNNPACK",
              (Param("samples", 256, "", int), Param("per_channel", True, "", bool)), _no_fn),
    RecipeDef("int8-dynamic", "quant", "dynamic int8 activations, per-channel int8 weights, XNNPACK", (), _no_fn),
    RecipeDef("int8w", "quant", "weight-only int8 for Linear layers (activations fp32)", (), _no_fn),
    RecipeDef("int4w", "quant", "weight-only int4 (range -8..7, stored in int8) for Linear layers", (), _no_fn),
    RecipeDef("qat", "quant", "PT2E quantization-aware training (int8), with Context.train_fn or labelled data",
              (Param("epochs", 3, "", int), Param("lr", 1e-3, "")), _no_fn),
    RecipeDef("pow2", "quant", "static int8 with power-of-two scales (Q(x) = round(x/2^k)*2^k), symmetric",
              (Param("samples", 256, "", int),), _no_fn),
    RecipeDef("int8-mixed", "quant", "int8 with ReLU6 fused and histogram calibration; the most sensitive layers stay "
              "fp32 until top-1 agreement with fp32 on held-out calibration data reaches target (checked on the .pte)",
              (Param("target", 0.97, ""), Param("samples", 512, "", int), Param("holdout", 0.25, ""),
               Param("probe", 8, "", int), Param("group", "block", "", str), Param("sqnr", 0.0, "")), _no_fn,
              "target"),
)}


def valid_recipes() -> str:
    """One line per recipe: the registered ones where their modules are loaded, else CATALOG's (no torch)."""
    listed = {**CATALOG, **RECIPES} if RECIPES else CATALOG
    return "\n".join(["  fp32  the uncompressed model"] + [f"  {r.usage()}" for r in listed.values()])


def _convert(p: Param, text: str, step: str) -> Any:
    try:
        if p.kind is bool:
            return text.lower() in ("1", "true", "yes", "on")
        return p.kind(text)
    except ValueError:
        raise UsageError(f"recipe {step!r}: {p.name} must be a {p.kind.__name__}, got {text!r}") from None


def parse(text: str) -> list[ParsedStep]:
    """``channel:0.3+int8`` -> steps with their parameters filled in; errors list the valid recipes."""
    _load_all()
    text = text.strip()
    if text in ("", "fp32", "none"):
        return []
    steps: list[ParsedStep] = []
    for raw in text.split("+"):
        name, _, arg = raw.strip().partition(":")
        r = RECIPES.get(name)
        if r is None:
            raise UsageError(f"unknown recipe {name!r} in {text!r}; valid recipes:\n{valid_recipes()}")
        params = {p.name: p.default for p in r.params}
        by_name = {p.name: p for p in r.params}
        for item in (a for a in arg.split(",") if a) if arg else ():
            key, eq, value = item.partition("=")
            if not eq:
                if r.positional is None:
                    raise UsageError(f"recipe {raw!r}: give parameters as key=value ({r.usage()})")
                key, value = r.positional, item
            if key not in by_name:
                raise UsageError(f"recipe {raw!r}: unknown parameter {key!r}; {r.usage()}")
            params[key] = _convert(by_name[key], value, raw)
        steps.append(ParsedStep(name, params))
    quant = [i for i, s in enumerate(steps) if RECIPES[s.name].kind in ("quant", "target")]
    if len(quant) > 1 or (quant and quant[0] != len(steps) - 1):
        raise UsageError(f"recipe {text!r}: at most one quantization step (or precision step), and it must come last "
                         "(e.g. channel:0.3+int8)")
    return steps


def canonical(text: str) -> str:
    """The recipe string with every parameter spelled out (the cache key and manifest use it)."""
    steps = parse(text)
    return "+".join(str(s) for s in steps) if steps else "fp32"


@dataclass
class Compressed:
    """The result of applying a recipe: an eager module or an exported quantized program."""

    recipe: str
    module: Optional[nn.Module]
    exported: Optional[torch.export.ExportedProgram]
    steps: tuple[Step, ...]
    quantized: bool = False
    params: int = 0  # parameters of the eager model after the module steps (before quantization)
    nonzero_params: int = 0
    target_step: Optional[str] = None  # the last step, carried out by the lowering target (then ``forward``
    #                                    is the model before it: score the artifact itself)

    def forward(self, *inputs: torch.Tensor) -> Any:
        import torch

        with torch.no_grad():
            if self.exported is not None:
                return self.exported.module()(*inputs)
            assert self.module is not None
            return self.module(*inputs)


def apply(model: nn.Module, text: str, ctx: Context) -> Compressed:
    """Apply recipe ``text`` to a copy of ``model`` (never modified)."""
    import torch
    from torch import nn

    steps = parse(text)
    current: Any = copy.deepcopy(model).eval()
    done: list[Step] = []
    eager = current
    for s in steps:
        r = RECIPES[s.name]
        ctx.log(f"recipe {s}")
        torch.manual_seed(ctx.seed)
        current, step = r.fn(current, ctx, **s.params)
        done.append(dataclasses.replace(step, recipe=s.name, params=dict(s.params)))
        if isinstance(current, nn.Module):
            eager = current
    canon = "+".join(str(s) for s in steps) if steps else "fp32"
    counts = {"params": count_params(eager), "nonzero_params": nonzero_params(eager)}
    if isinstance(current, torch.export.ExportedProgram):
        return Compressed(canon, None, current, tuple(done), quantized=True, **counts)
    return Compressed(canon, current.eval(), None, tuple(done), **counts)


def apply_and_lower(spec: Any, recipe: str, ctx: Context, *, module: Any = None, format: str = "pte",
                    backend: Optional[str] = None, progress: Optional[Callable[[str], None]] = None
                    ) -> tuple[Compressed, tuple[dict, ...], Any]:
    """``apply`` ``recipe`` to ``module`` (default: ``spec.module``) and lower the result for
    (format, backend); the steps are recorded, JSON-safe, in the artifact's manifest. Returns
    ``(compressed, steps, artifact)``: what the sweep and the farm both do with a recipe (``steps``
    are this run's, even when the artifact came from the cache)."""
    from edgeprobe.lower import TargetRecipe, lower, target_recipes
    from edgeprobe.models import ModelSpec

    parsed = parse(recipe)
    last = parsed[-1] if parsed else None
    own = target_recipes(format, backend) if last is not None else frozenset()
    target_step = None
    if last is not None and last.name in own:
        target_step = last
        comp = apply(module if module is not None else spec.module, "+".join(str(s) for s in parsed[:-1]), ctx)
        done = Step(last.name, dict(last.params), notes=(f"carried out by the {format} lowering target",))
        comp = dataclasses.replace(comp, recipe="+".join(str(s) for s in parsed), steps=comp.steps + (done,),
                                   quantized=True, target_step=last.name)
    elif last is not None and RECIPES[last.name].kind == "target":
        raise UnsupportedCombinationError(f"recipe {last.name!r} is carried out by the lowering target, and "
                                          f"--format {format} does not have it; {_formats_with(last.name)}")
    else:
        comp = apply(module if module is not None else spec.module, recipe, ctx)
    steps = tuple(json_safe(dataclasses.asdict(s)) for s in comp.steps)
    art = lower(ModelSpec(ref=spec.ref, example_inputs=spec.example_inputs, module=comp.module, exported=comp.exported),
                format=format, backend=backend, recipe=comp.recipe, compression=steps, quantized=comp.quantized,
                progress=progress,
                target_recipe=None if target_step is None else TargetRecipe(
                    target_step.name, dict(target_step.params), ctx.calibration, ctx.log))
    return comp, steps, art


def _formats_with(name: str) -> str:
    """Which formats' targets carry out recipe ``name``, for an error message."""
    from edgeprobe.lower import capabilities, target_recipes

    have = []
    for fmt in capabilities.FORMATS:
        try:
            if name in target_recipes(fmt):
                have.append(fmt)
        except Exception:  # noqa: BLE001  (a format not available here has no say)
            continue
    return f"formats that have it: {', '.join(have)}" if have else "no format here has it"


def json_safe(x: Any) -> Any:
    """``x`` with non-finite floats made JSON-safe (NaN -> None, infinities -> "inf"/"-inf")."""
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def nonzero_params(module: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in module.parameters())


def as_dataset(data: Union[None, Dataset, torch.Tensor, Sequence[torch.Tensor], str, Callable[[], Any]]) -> Optional[Dataset]:
    """Calibration/training data from the user: a Dataset, a tensor (N, ...), a list of tensors,
    an ``.npz`` path (arrays ``x`` [and ``y``], or the first array), or a callable returning any of these."""
    import torch

    if data is None or isinstance(data, Dataset):
        return data
    if callable(data) and not isinstance(data, (torch.Tensor, str)):
        return as_dataset(data())
    if isinstance(data, str) or hasattr(data, "__fspath__"):
        import numpy as np

        try:
            arrs = np.load(str(data))
        except (OSError, ValueError) as exc:
            raise UsageError(f"calibration data {data}: cannot read it as .npz ({exc})") from None
        keys = list(arrs.keys())
        if not keys:
            raise UsageError(f"calibration data {data}: the .npz holds no arrays")
        x = torch.from_numpy(arrs["x"] if "x" in keys else arrs[keys[0]]).float()
        y = torch.from_numpy(arrs["y"]).long() if "y" in keys else None
        return Dataset(x, y)
    if isinstance(data, torch.Tensor):
        return Dataset(data)
    if isinstance(data, (list, tuple)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return Dataset(torch.cat([t if t.dim() > 0 else t[None] for t in data]))
    raise UsageError(f"calibration/training data of type {type(data).__name__} is not supported; give a tensor, "
                     "a list of tensors, an .npz path or a callable returning one")
