"""The model as a graph of operators with its tensor sizes, and its cost graph for the planner;
cutting it into a head and a tail program is ``split/partition.py``.

``op_graph`` exports the model (``torch.export``, ``strict=False``) and reads its ``call_function``
nodes: every one is an operator node, with its output bytes (from ``node.meta["val"]``), its
operator predecessors and the model inputs it reads. Parameters, buffers and constants never cross
the network: they live with whichever side runs the operator that reads them (a parameter read on
both sides is in both programs). ``to_cost_graph`` turns it into the planner's ``CostGraph``.

Node names are those of ``OpGraph.exported``: the model's export, functionalized with
``run_decompositions({})`` (in-place ops such as ``relu_``/``add_`` become ``relu``/``add``; BatchNorm
becomes ``_native_batch_norm_legit_no_training`` + ``getitem``). Measure per-node costs on that
program so the names match: lower ``og.exported`` (its edge nodes' ``from_node`` chains reach these
names) and time ``og.exported.module()`` on the server. A fresh ``op_graph`` of the same model
gives the same names; pass the ``OpGraph`` to ``split`` to skip exporting again.

``getitem`` nodes (one element of an operator's tuple output) always sit with their producer: in
the cost graph they are folded into it (the operator has several output tensors), and ``split``
(split/partition.py) puts them on the producer's side, so a tuple never crosses whole.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import fx, nn

from edgeprobe.split.model import CostGraph, NodeCost, TensorEdge

__all__ = ["TensorInfo", "OpNode", "GraphInput", "OpGraph", "op_graph", "to_cost_graph"]


# ---------------------------------------------------------------------------------------------
# data model


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int


@dataclass(frozen=True)
class OpNode:
    """One ``call_function`` node of the exported graph."""

    name: str
    target: str
    outputs: tuple[TensorInfo, ...]  # one per output tensor (several for a tuple-returning op)
    output_bytes: int  # sum over ``outputs``
    preds: tuple[str, ...]  # operator nodes whose outputs it reads (graph order, unique)
    graph_inputs: tuple[str, ...]  # model (user) inputs it reads
    params: tuple[str, ...] = ()  # parameters/buffers/constants it reads (qualified names)
    param_bytes: int = 0
    getitem_of: Optional[tuple[str, int]] = None  # operator.getitem: (producer, index)
    module_path: str = ""  # innermost nn.Module (nn_module_stack), to map profiles to nodes

    @property
    def is_getitem(self) -> bool:
        return self.getitem_of is not None


@dataclass(frozen=True)
class GraphInput:
    name: str
    info: TensorInfo
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class OpGraph:
    nodes: tuple[OpNode, ...]  # topological (graph) order
    inputs: tuple[GraphInput, ...]  # user inputs, in call order
    outputs: tuple[str, ...]  # model outputs (flattened): the producing node or input name
    exported: torch.export.ExportedProgram = field(compare=False, repr=False)
    example_inputs: tuple[torch.Tensor, ...] = field(compare=False, repr=False, default=())

    def node(self, name: str) -> OpNode:
        return self._by_name()[name]

    def _by_name(self) -> dict[str, OpNode]:
        cache = self.__dict__.get("_index")
        if cache is None:
            cache = {n.name: n for n in self.nodes}
            object.__setattr__(self, "_index", cache)
        return cache

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def consumers(self, name: str) -> tuple[str, ...]:
        """Operator nodes that read the value ``name`` (an operator node or a model input)."""
        cache = self.__dict__.get("_consumers")
        if cache is None:
            cache = {}
            for n in self.nodes:
                for v in n.preds + n.graph_inputs:
                    cache.setdefault(v, []).append(n.name)
            object.__setattr__(self, "_consumers", cache)
        return tuple(cache.get(name, ()))

    def value_bytes(self, name: str) -> int:
        for i in self.inputs:
            if i.name == name:
                return i.info.nbytes
        return self.node(name).output_bytes

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """``names`` and every operator node they depend on (a predecessor-closed set)."""
        out: set[str] = set()
        stack = list(names)
        while stack:
            n = stack.pop()
            if n in out:
                continue
            out.add(n)
            stack.extend(self.node(n).preds)
        return out


# ---------------------------------------------------------------------------------------------
# export


ModelOrProgram = Union[nn.Module, torch.export.ExportedProgram, OpGraph]


def _export(model: ModelOrProgram, example_inputs: Optional[Sequence[torch.Tensor]]
            ) -> tuple[torch.export.ExportedProgram, tuple[torch.Tensor, ...]]:
    if isinstance(model, OpGraph):
        return model.exported, tuple(example_inputs) if example_inputs is not None else model.example_inputs
    if isinstance(model, torch.export.ExportedProgram):
        ep = model
        if example_inputs is None:
            if ep.example_inputs is None:
                raise ValueError("the exported program carries no example inputs; pass example_inputs")
            args, kwargs = ep.example_inputs
            if kwargs:
                raise ValueError("exported programs with keyword inputs are not supported")
            example_inputs = args
    else:
        if example_inputs is None:
            raise ValueError("an nn.Module needs example_inputs")
        example_inputs = tuple(example_inputs)
        with torch.no_grad():
            ep = torch.export.export(model, example_inputs, strict=False)
    sig = ep.graph_signature
    if sig.buffers_to_mutate or getattr(sig, "user_inputs_to_mutate", None):
        raise ValueError(
            "the model mutates buffers or inputs in forward (a BatchNorm in training mode?); "
            "put it in eval mode (model.eval()) before splitting")
    if not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise ValueError("only tensor inputs are supported")
    # Functionalize (no decomposition table: conv2d, linear... stay whole). The pre-dispatch graph
    # keeps in-place ops (ReLU(inplace=True) -> aten.relu_, `out += identity` -> aten.add_), whose
    # readers depend on the mutation only through program order, not through graph edges: a cut
    # between a mutation and a later reader of the mutated tensor would read a stale value.
    with torch.no_grad():
        ep = ep.run_decompositions({})
    for node in ep.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            raise ValueError(f"node {node.name!r} ({node.target}) mutates its input after "
                             "functionalization; such graphs cannot be split")
    return ep, tuple(example_inputs)


def _unlifted(ep: torch.export.ExportedProgram) -> fx.GraphModule:
    """The exported program as a module with get_attr weights, without the input guard call."""
    gm = ep.module()
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and not n.users:  # _guards_fn(x): checks shapes, returns nothing
            gm.graph.erase_node(n)
    gm.graph.lint()
    return gm


def _info(val: Any, what: str) -> TensorInfo:
    if not isinstance(val, torch.Tensor):
        raise ValueError(f"{what} is not a tensor ({type(val).__name__}); only tensor values can cross")
    try:
        shape = tuple(int(d) for d in val.shape)
    except Exception:  # noqa: BLE001 - an unbacked SymInt
        raise ValueError(f"{what} has a dynamic shape {tuple(val.shape)}; export with static shapes") from None
    n = 1
    for d in shape:
        n *= d
    return TensorInfo(shape, val.dtype, n * val.element_size())


def _outputs_of(node: fx.Node) -> tuple[TensorInfo, ...]:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return (_info(val, f"node {node.name!r}"),)
    if isinstance(val, (tuple, list)):
        return tuple(_info(v, f"output {i} of node {node.name!r}") if isinstance(v, torch.Tensor)
                     else TensorInfo((), torch.float32, 0) for i, v in enumerate(val))
    return ()  # None / SymInt / scalar: nothing that could cross as a tensor


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return str(path)


def _flat_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: out.append(a) or a)
    return out


def _unique(seq: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(seq))


def _output_values(gm: fx.GraphModule) -> list[fx.Node]:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    vals: list[Any] = []
    fx.node.map_aggregate(out.args[0], lambda a: vals.append(a) or a)
    for v in vals:
        if not isinstance(v, fx.Node):
            raise ValueError(f"model output {v!r} is not a tensor; only tensor outputs are supported")
    return vals


def op_graph(model: ModelOrProgram, example_inputs: Optional[Sequence[torch.Tensor]] = None) -> OpGraph:
    """Export ``model`` and describe its operators (names as in the exported graph)."""
    ep, inputs = _export(model, example_inputs)
    gm = _unlifted(ep)
    attr_bytes: dict[str, int] = {}
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        attr_bytes[name] = t.numel() * t.element_size()

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    ops: list[OpNode] = []
    consumers: dict[str, list[str]] = {p.name: [] for p in placeholders}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        if node.op != "call_function":
            raise ValueError(f"unsupported node {node.op} {node.name!r} in the exported graph")
        args = _flat_args(node)
        preds = _unique(a.name for a in args if a.op == "call_function")
        gins = _unique(a.name for a in args if a.op == "placeholder")
        params = _unique(str(a.target) for a in args if a.op == "get_attr")
        for g in gins:
            consumers[g].append(node.name)
        outs = _outputs_of(node)
        getitem_of = None
        if node.target is operator.getitem:
            src, idx = node.args[0], node.args[1]
            getitem_of = (src.name, int(idx))
        ops.append(OpNode(
            name=node.name,
            target=str(node.target) if isinstance(node.target, torch._ops.OpOverload)
            else fx.node._get_qualified_name(node.target),
            outputs=outs,
            output_bytes=sum(o.nbytes for o in outs),
            preds=preds,
            graph_inputs=gins,
            params=params,
            param_bytes=sum(attr_bytes.get(p, _attr_nbytes(gm, p)) for p in params),
            getitem_of=getitem_of,
            module_path=_module_path(node),
        ))
    ginputs = tuple(GraphInput(p.name, _info(p.meta.get("val", x), f"input {p.name!r}"), tuple(consumers[p.name]))
                    for p, x in zip(placeholders, inputs))
    outputs = tuple(v.name for v in _output_values(gm))
    return OpGraph(tuple(ops), ginputs, outputs, ep, inputs)


def _attr_nbytes(gm: fx.GraphModule, target: str) -> int:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj.numel() * obj.element_size() if isinstance(obj, torch.Tensor) else 0


# ---------------------------------------------------------------------------------------------
# planner data model


def to_cost_graph(
    og: OpGraph,
    device_ms: Mapping[str, float],
    server_ms: Mapping[str, float],
    *,
    device_energy_mj: Optional[Mapping[str, float]] = None,
    device_memory_bytes: Optional[Mapping[str, int]] = None,
    tensor_bytes: Optional[Mapping[str, int]] = None,
    default_ms: Optional[float] = 0.0,
) -> CostGraph:
    """The planner's ``CostGraph``: one ``NodeCost`` per operator (getitems folded into their
    producer, which then has one tensor per element) and one ``TensorEdge`` per value that could
    cross: the model inputs (``producer=None``, ``is_input``) and every operator output that some
    operator reads or that is a model output (``is_output``).

    A node missing from ``device_ms``/``server_ms`` costs ``default_ms`` (pass ``None`` to make
    that a KeyError). ``device_memory_bytes`` defaults, per node, to the bytes of the weights it
    reads plus its output bytes. ``tensor_bytes`` overrides the fp32 bytes of a tensor (e.g. its
    encoded wire size from ``edgeprobe_runner.codec.encoded_bytes``).
    """
    def cost(table: Optional[Mapping[str, float]], name: str, default: Optional[float]) -> Optional[float]:
        if table is None:
            return None
        if name in table:
            return float(table[name])
        if default is None:
            raise KeyError(f"no cost for node {name!r}")
        return default

    real = [n for n in og.nodes if not n.is_getitem]
    owner = {n.name: (n.getitem_of[0] if n.getitem_of else n.name) for n in og.nodes}

    def readers(value: str) -> tuple[str, ...]:
        return _unique(owner[c] for c in og.consumers(value))

    nodes = tuple(NodeCost(
        name=n.name,
        device_ms=cost(device_ms, n.name, default_ms),
        server_ms=cost(server_ms, n.name, default_ms),
        device_energy_mj=cost(device_energy_mj, n.name, 0.0) if device_energy_mj is not None else None,
        device_memory_bytes=int(device_memory_bytes.get(n.name, 0)) if device_memory_bytes is not None
        else n.param_bytes + n.output_bytes,
    ) for n in real)

    outputs = set(og.outputs)
    tb = dict(tensor_bytes or {})
    tensors: list[TensorEdge] = []
    for i in og.inputs:
        cons = readers(i.name)
        if cons or i.name in outputs:
            tensors.append(TensorEdge(i.name, None, cons, tb.get(i.name, i.info.nbytes),
                                      is_input=True, is_output=i.name in outputs))
    getitems: dict[str, list[OpNode]] = {}
    for n in og.nodes:
        if n.getitem_of:
            getitems.setdefault(n.getitem_of[0], []).append(n)
    for n in real:
        values = getitems.get(n.name) or [n]
        for v in values:
            cons = readers(v.name)
            if cons or v.name in outputs:
                tensors.append(TensorEdge(v.name, n.name, cons, tb.get(v.name, v.output_bytes),
                                          is_output=v.name in outputs))
    return CostGraph(nodes=nodes, tensors=tuple(tensors))
