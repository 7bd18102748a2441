"""The model as a graph of operators, and a model cut in two programs (head on the device, tail on
the server).

``op_graph`` exports the model (``torch.export``, ``strict=False``) and reads its ``call_function``
nodes: every one is an operator node, with its output bytes (from ``node.meta["val"]``), its
operator predecessors and the model inputs it reads. Parameters, buffers and constants never cross
the network: they live with whichever side runs the operator that reads them (a parameter read on
both sides is in both programs). ``to_cost_graph`` turns it into the planner's ``CostGraph``.

``split`` builds the two programs by hand from the exported program's unlifted module (``get_attr``
for the weights). ``torch.fx.passes.split_module`` is not used because (torch 2.14) it hands the
weights to each submodule as *inputs* (placeholders) — a lowered head would then take its weights
at run time instead of baking them into the .pte — it renames the nodes (``conv2d`` ->
``conv2d_default``), which breaks the link to ``op_graph`` names and ETDump rows, it crashes with
``keep_original_order=True`` (KeyError on a node of the other partition), and it routes model inputs
the tail needs past the head in an order mixed with the weights.

Contract of a ``SplitModel`` (the wire protocol relies on it):

* ``head(*model_inputs)`` returns ``head_outputs``: first the ``crossing`` tensors, in order (a
  model input the tail reads is passed through the head), then the model outputs produced on the
  device that are not already crossing.
* ``tail(*crossing)`` returns the model outputs produced on the server, in model order
  (``tail_outputs_final``).
* ``run`` reassembles all model outputs, flattened as ``torch.export`` flattens them (pytree
  order: for a tensor, a tuple or a list, the order a reader expects).

Node names are those of ``OpGraph.exported``: the model's export, functionalized with
``run_decompositions({})`` (in-place ops such as ``relu_``/``add_`` become ``relu``/``add``; BatchNorm
becomes ``_native_batch_norm_legit_no_training`` + ``getitem``). Measure per-node costs on that
program so the names match: lower ``og.exported`` (its edge nodes' ``from_node`` chains reach these
names) and time ``og.exported.module()`` on the server. A fresh ``op_graph`` of the same model
gives the same names; pass the ``OpGraph`` to ``split`` to skip exporting again.

``getitem`` nodes (one element of an operator's tuple output) always sit with their producer: in
the cost graph they are folded into it (the operator has several output tensors), and ``split``
puts them on the producer's side, so a tuple never crosses whole.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import fx, nn

from edgeprobe.split.model import CostGraph, NodeCost, TensorEdge

__all__ = [
    "TensorInfo", "OpNode", "GraphInput", "OpGraph", "SplitModel",
    "op_graph", "to_cost_graph", "split", "export_head", "export_tail",
    "head_example_inputs", "tail_example_inputs",
]


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


# ---------------------------------------------------------------------------------------------
# split


@dataclass
class SplitModel:
    """A model cut in two: ``head`` (device) and ``tail`` (server); see the module docstring."""

    head: fx.GraphModule
    tail: fx.GraphModule
    crossing: list[str]  # sent head -> tail: the head returns them first, the tail takes them
    head_outputs: list[str]  # everything the head returns: crossing, then final outputs
    head_outputs_final: list[int]  # model outputs produced on the device (indices)
    tail_outputs_final: list[int]  # model outputs the tail returns, in this order
    input_names: list[str]
    output_names: list[str]  # model outputs (flattened), by producing value
    device_nodes: frozenset[str]  # as placed (getitems follow their producer)
    head_example_inputs: tuple[torch.Tensor, ...] = ()
    tail_example_inputs: tuple[torch.Tensor, ...] = ()

    @property
    def device_only(self) -> bool:
        return not self.crossing and not self.tail_outputs_final

    @property
    def cloud_only(self) -> bool:
        return not self.device_nodes

    def tail_inputs(self, head_out: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(head_out[: len(self.crossing)])

    def assemble(self, head_out: Sequence[torch.Tensor], tail_out: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, ...]:
        """Model outputs, in model order, from the head's and the tail's outputs."""
        out: list[torch.Tensor] = []
        for i, name in enumerate(self.output_names):
            if i in self.head_outputs_final:
                out.append(head_out[self.head_outputs.index(name)])
            else:
                out.append(tail_out[self.tail_outputs_final.index(i)])
        return tuple(out)

    def run(self, *inputs: torch.Tensor, encoding: Optional[Union[str, Sequence[str]]] = None
            ) -> tuple[torch.Tensor, ...]:
        """Head, then (optionally through the wire codec) tail; the model's flattened outputs."""
        with torch.no_grad():
            head_out = tuple(self.head(*inputs))
            sent = self.tail_inputs(head_out)
            if encoding is not None:
                from edgeprobe_runner import codec

                sent = codec.decode(codec.encode(sent, encoding))
            tail_out = tuple(self.tail(*sent))
        return self.assemble(head_out, tail_out)


def _side_of(og: OpGraph, device_nodes: Iterable[str]) -> set[str]:
    """The device set with getitems on their producer's side; ValueError if not closed."""
    names = set(og.names)
    given = set(device_nodes)
    unknown = sorted(given - names)
    if unknown:
        raise ValueError(f"device_nodes names {len(unknown)} node(s) not in the graph: {', '.join(unknown[:8])}")
    dev = set(given)
    for n in og.nodes:
        if n.getitem_of and n.getitem_of[0] in dev:
            dev.add(n.name)
    bad = [(n.name, p) for n in og.nodes if n.name in dev for p in n.preds if p not in dev]
    if bad:
        shown = "; ".join(f"{n!r} is on the device but its input {p!r} is not" for n, p in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"device_nodes is not closed under predecessors: {shown}{more}. "
                         "The head must compute everything the device nodes read.")
    return dev


def _copy_into(graph: fx.Graph, env: dict[str, fx.Node], node: fx.Node) -> None:
    def arg(a: fx.Node) -> fx.Node:
        if a.name not in env:
            if a.op != "get_attr":  # pragma: no cover - guarded by _side_of
                raise AssertionError(f"{node.name} reads {a.name}, which is on the other side")
            g = graph.create_node("get_attr", a.target, name=a.name)
            g.meta = dict(a.meta)
            env[a.name] = g
        return env[a.name]

    new = graph.node_copy(node, arg)
    env[node.name] = new


def split(model: ModelOrProgram, example_inputs: Optional[Sequence[torch.Tensor]],
          device_nodes: Iterable[str]) -> SplitModel:
    """Cut the model: operators in ``device_nodes`` (predecessor-closed) run in the head, the rest
    in the tail. ``model`` may be an ``nn.Module``, an ``ExportedProgram`` or an ``OpGraph`` (its
    export is reused, so node names match)."""
    og = model if isinstance(model, OpGraph) else op_graph(model, example_inputs)
    ep, inputs = _export(og, example_inputs)
    dev = _side_of(og, device_nodes)
    src = og.__dict__.get("_unlifted") if ep is og.exported else None
    if src is None:
        src = _unlifted(ep)
        if ep is og.exported:  # read-only from here on: the halves copy nodes, share the weights
            object.__setattr__(og, "_unlifted", src)

    placeholders = [n for n in src.graph.nodes if n.op == "placeholder"]
    ops = [n for n in src.graph.nodes if n.op == "call_function"]
    out_vals = _output_values(src)
    on_device = {p.name for p in placeholders} | dev
    # a model output that is a constant (get_attr) is produced by the head
    on_device |= {v.name for v in out_vals if v.op == "get_attr"}

    tail_reads: list[str] = []
    for n in ops:
        if n.name not in dev:
            tail_reads.extend(a.name for a in _flat_args(n) if a.name in on_device and a.op != "get_attr")
    order = {n.name: i for i, n in enumerate(src.graph.nodes)}
    crossing = sorted(_unique(tail_reads), key=order.__getitem__)

    output_names = [v.name for v in out_vals]
    head_final = [i for i, v in enumerate(out_vals) if v.name in on_device]
    tail_final = [i for i in range(len(out_vals)) if i not in head_final]
    head_outputs = list(_unique(crossing + [output_names[i] for i in head_final]))

    # head: model inputs -> crossing + device-side outputs
    hg, henv = fx.Graph(), {}
    for p in placeholders:
        henv[p.name] = hg.node_copy(p)
    for n in ops:
        if n.name in dev:
            _copy_into(hg, henv, n)
    for name in head_outputs:
        if name not in henv:  # a constant model output
            v = next(v for v in out_vals if v.name == name)
            g = hg.create_node("get_attr", v.target, name=v.name)
            g.meta = dict(v.meta)
            henv[name] = g
    hg.output(tuple(henv[n] for n in head_outputs))
    hg.lint()

    # tail: crossing -> server-side outputs
    tg, tenv = fx.Graph(), {}
    src_nodes = {n.name: n for n in src.graph.nodes}
    for name in crossing:
        ph = tg.placeholder(name)
        ph.meta = dict(src_nodes[name].meta)
        tenv[name] = ph
    for n in ops:
        if n.name not in dev:
            _copy_into(tg, tenv, n)
    tg.output(tuple(tenv[output_names[i]] for i in tail_final))
    tg.lint()

    head = fx.GraphModule(src, hg, class_name="SplitHead")
    tail = fx.GraphModule(src, tg, class_name="SplitTail")
    result = SplitModel(
        head=head, tail=tail, crossing=crossing, head_outputs=head_outputs,
        head_outputs_final=head_final, tail_outputs_final=tail_final,
        input_names=[p.name for p in placeholders], output_names=output_names,
        device_nodes=frozenset(dev), head_example_inputs=inputs,
    )
    with torch.no_grad():
        result.tail_example_inputs = tuple(t.detach() for t in result.tail_inputs(tuple(head(*inputs))))
    return result


def head_example_inputs(s: SplitModel) -> tuple[torch.Tensor, ...]:
    return s.head_example_inputs


def tail_example_inputs(s: SplitModel) -> tuple[torch.Tensor, ...]:
    return s.tail_example_inputs


def export_head(s: SplitModel) -> torch.export.ExportedProgram:
    """The head as an ExportedProgram, ready for ``edgeprobe.lower.lower(ModelSpec(exported=...))``."""
    with torch.no_grad():
        return torch.export.export(s.head, s.head_example_inputs, strict=False)


def export_tail(s: SplitModel) -> torch.export.ExportedProgram:
    """The tail as an ExportedProgram (for a server that runs exported programs)."""
    if not s.crossing:
        raise ValueError("a device-only split has no tail to export")
    with torch.no_grad():
        return torch.export.export(s.tail, s.tail_example_inputs, strict=False)
