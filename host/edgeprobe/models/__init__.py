"""Model intake: one ``ModelSpec`` from a torchvision name, a zoo name, ``file.py:factory``,
a saved ExportedProgram ``.pt2``, or an ``nn.Module`` handed in through the API."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from edgeprobe.errors import InputShapeError, ModelNotFoundError, UsageError
from edgeprobe.models import zoo

DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)
SEED = 0

ModelLike = Union[str, Path, nn.Module, torch.export.ExportedProgram]


@dataclass
class ModelSpec:
    """A model ready to lower: the module (or exported program) and its example inputs.

    A spec is a snapshot: the module is exported once (``program()``), and that one export is both
    what the cache key hashes and what ExecuTorch lowers. Change the module's structure and build a
    new spec (a changed ``repr`` is noticed and re-exported; in-place weight edits are hashed)."""

    ref: str
    example_inputs: tuple[torch.Tensor, ...]
    module: Optional[nn.Module] = None
    exported: Optional[torch.export.ExportedProgram] = None
    source_sha256: Optional[str] = None  # of the factory file (``file.py:factory``), when there is one
    _export: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    def program(self) -> torch.export.ExportedProgram:
        """The ExportedProgram to lower: ``exported`` as given, or ``module`` exported once (cached).

        Raises what ``torch.export`` raised (also on later calls) when the module cannot be exported."""
        if self.exported is not None:
            return self.exported
        assert self.module is not None
        stamp = (id(self.module), repr(self.module), tuple((tuple(x.shape), x.dtype) for x in self.example_inputs))
        if self._export is None or self._export[0] != stamp:
            try:
                with torch.no_grad():
                    result: object = torch.export.export(self.module, self.example_inputs, strict=False)
            except Exception as exc:  # noqa: BLE001 - remembered; the lowering translates it
                result = exc
            self._export = (stamp, result)
        result = self._export[1]
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Content hash of the model (cache key part): the exported graph's code (so an edited
        ``forward`` is a new model), its signature, weights and constants, and the example-input specs.

        A module that ``torch.export`` cannot trace (it may still trace to TorchScript) is keyed on
        the source of every module class in its tree, the factory file, ``repr`` and weights."""
        h = hashlib.sha256()
        try:
            ep = self.program()
        except Exception:  # noqa: BLE001 - not exportable: key on the source instead
            ep = None
        if ep is not None:
            h.update(b"exported\0")
            for name, gm in ep.graph_module.named_modules():
                if isinstance(gm, torch.fx.GraphModule):
                    h.update(f"{name}\0{gm.code}\0".encode())
            h.update(str(ep.graph_signature).encode())
            tensors = [*ep.state_dict.items(), *sorted(ep.constants.items())]
        else:
            assert self.module is not None
            h.update(b"source\0")
            h.update(f"{type(self.module).__module__}.{type(self.module).__qualname__}".encode())
            h.update(repr(self.module).encode())
            h.update((self.source_sha256 or "").encode())
            for cls in sorted({type(m) for m in self.module.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
                h.update(f"{cls.__module__}.{cls.__qualname__}\0".encode())
                h.update(_class_source(cls).encode())
            tensors = list(self.module.state_dict().items())
        for name, t in tensors:
            h.update(name.encode())
            if not isinstance(t, torch.Tensor):  # a script object among the constants
                h.update(repr(t).encode())
                continue
            t = t.detach().contiguous().cpu()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        for x in self.example_inputs:
            h.update(f"{x.dtype}{tuple(x.shape)}".encode())
        return h.hexdigest()

    def eager_outputs(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            if self.exported is not None:
                out = self.exported.module()(*inputs)
            else:
                assert self.module is not None
                out = self.module(*inputs)
        return flatten_outputs(out)


def _class_source(cls: type) -> str:
    """The source of a module class (its forward and helpers), or its methods' bytecode where the
    source is not on disk."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        parts = []
        for name, fn in sorted(vars(cls).items()):
            code = getattr(fn, "__code__", None)
            if code is not None:
                parts.append(f"{name}:{code.co_code.hex()}:{code.co_consts!r}:{code.co_names!r}")
        return "\n".join(parts)


def flatten_outputs(out: object) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (list, tuple)):
        return tuple(t for o in out for t in flatten_outputs(o))
    if isinstance(out, dict):
        return tuple(t for k in sorted(out) for t in flatten_outputs(out[k]))
    raise UsageError(f"model output of type {type(out).__name__} is not a tensor, tuple or dict")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' or '1x3x224x224' -> (1, 3, 224, 224)."""
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputShapeError(f"--input-shape {text!r} is not a list of integers like 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise InputShapeError(f"--input-shape {text!r} must be positive integers like 1,3,224,224")
    return shape


def _random_inputs(shapes: Sequence[Sequence[int]]) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(SEED)
    return tuple(torch.randn(*s, generator=g) for s in shapes)


def _check_forward(spec: ModelSpec) -> ModelSpec:
    """Run the model once so a wrong input shape fails here, with a message, not deep in export."""
    try:
        spec.eager_outputs(spec.example_inputs)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any forward failure means the inputs do not fit
        shapes = ", ".join(str(tuple(x.shape)) for x in spec.example_inputs)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputShapeError(
            f"model {spec.ref!r} rejected example input {shapes}: {first}. "
            "Pass --input-shape matching the model (e.g. --input-shape 1,3,224,224)."
        ) from None
    return spec


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def known_names() -> list[str]:
    return sorted(set(zoo.NAMES) | set(_torchvision_names()))


def _load_weights(module: nn.Module, weights: Union[str, Path]) -> None:
    path = Path(weights)
    if not path.is_file():
        raise ModelNotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot load weights {path} with weights_only=True: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(f"weights {path} do not fit the model: {str(exc).splitlines()[0]}") from None


def _from_factory(ref: str) -> tuple[nn.Module, Optional[tuple[torch.Tensor, ...]], str]:
    """(module, its example inputs if the factory returns them, sha256 of the file)."""
    file_part, _, factory_name = ref.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist (expected path/to/file.py:factory)")
    source_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    mod_name = f"edgeprobe_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    factory: Optional[Callable[[], object]] = getattr(module, factory_name, None)
    if not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(factory_name, names, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(f"{path} has no callable {factory_name!r}.{hint}")
    torch.manual_seed(SEED)
    made = factory()
    if isinstance(made, nn.Module):
        return made, None, source_sha256
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        inputs = made[1]
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        return made[0], inputs, source_sha256
    raise UsageError(f"{ref} must return an nn.Module or (nn.Module, example_inputs), got {type(made).__name__}")


def load_model(
    model: ModelLike,
    *,
    example_inputs: Optional[Sequence[torch.Tensor]] = None,
    input_shape: Optional[Sequence[int]] = None,
    weights: Optional[Union[str, Path]] = None,
) -> ModelSpec:
    """Resolve any supported model reference into a ``ModelSpec`` in eval mode.

    Torchvision models get random weights (seeded, so repeatable) unless ``weights`` names a file.
    ``input_shape`` replaces the default example input (one input).
    """
    shape_override = [tuple(input_shape)] if input_shape else None
    given = tuple(example_inputs) if example_inputs is not None else None

    if isinstance(model, torch.export.ExportedProgram):
        inputs = given or _example_from_exported(model, shape_override)
        return _check_forward(ModelSpec(ref="<ExportedProgram>", exported=model, example_inputs=inputs))

    if isinstance(model, nn.Module):
        if weights:
            _load_weights(model, weights)
        if given is None and shape_override is None:
            raise UsageError("an nn.Module needs example_inputs=... or input_shape=...")
        inputs = given or _random_inputs(shape_override)  # type: ignore[arg-type]
        return _check_forward(ModelSpec(ref=type(model).__name__, module=model.eval(), example_inputs=inputs))

    ref = str(model)
    if ref.endswith(".pt2"):
        path = Path(ref)
        if not path.is_file():
            raise ModelNotFoundError(f"exported program {path} does not exist")
        try:
            ep = torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"{path} is not a loadable torch.export .pt2: {exc}") from None
        inputs = given or _example_from_exported(ep, shape_override)
        return _check_forward(ModelSpec(ref=ref, exported=ep, example_inputs=inputs))

    if ".py:" in ref:
        module, factory_inputs, source = _from_factory(ref)
        if weights:
            _load_weights(module, weights)
        inputs = given or (
            _random_inputs(shape_override) if shape_override else factory_inputs or _random_inputs([DEFAULT_IMAGE_SHAPE])
        )
        return _check_forward(ModelSpec(ref=ref, module=module.eval(), example_inputs=inputs, source_sha256=source))

    if ref in zoo.NAMES:
        module, default_shape = zoo.build(ref)
    elif ref in _torchvision_names():
        import torchvision

        torch.manual_seed(SEED)
        module, default_shape = torchvision.models.get_model(ref, weights=None), DEFAULT_IMAGE_SHAPE
    else:
        close = difflib.get_close_matches(ref, known_names(), n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ModelNotFoundError(
            f"unknown model {ref!r}.{hint} Use a torchvision name (see `edgeprobe models`), "
            "path/to/file.py:factory, or a .pt2 file."
        )
    if weights:
        _load_weights(module, weights)
    inputs = given or _random_inputs(shape_override or [default_shape])
    return _check_forward(ModelSpec(ref=ref, module=module.eval(), example_inputs=inputs))


def _example_from_exported(
    ep: torch.export.ExportedProgram, shape_override: Optional[list[tuple[int, ...]]]
) -> tuple[torch.Tensor, ...]:
    if shape_override:
        return _random_inputs(shape_override)
    if ep.example_inputs is not None:
        args, kwargs = ep.example_inputs
        if kwargs:
            raise UsageError("exported programs with keyword inputs are not supported")
        return tuple(a for a in args if isinstance(a, torch.Tensor))
    metas = [
        n.meta.get("val")
        for n in ep.graph.nodes
        if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs
    ]
    if not all(isinstance(m, torch.Tensor) for m in metas):
        raise UsageError("cannot infer example inputs from the .pt2; pass --input-shape")
    return _random_inputs([tuple(int(d) for d in m.shape) for m in metas])


__all__ = ["ModelSpec", "load_model", "known_names", "parse_input_shape"]
