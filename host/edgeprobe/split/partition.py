"""A model cut in two programs, the head (device) and the tail (server), from its ``OpGraph``.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import fx

from edgeprobe.split.graph import ModelOrProgram, OpGraph, _export, _flat_args, _output_values, _unique, _unlifted, op_graph

__all__ = ["SplitModel", "split", "export_head", "export_tail", "head_example_inputs", "tail_example_inputs"]


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
