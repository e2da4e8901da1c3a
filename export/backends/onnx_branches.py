"""Several graphs in one .onnx file: an ``If`` on a selector input picks the graph a method runs.

ONNX holds one graph per file, and a program whose methods are different modules (the decoder's squeezed prefill
and its exact prompt tail, ``prefill_exact``) would otherwise be several files that each carry the weights. Here
every graph becomes one branch of a chain of ``If`` nodes on an int64 input ``branch`` ([1]: 0 for the first
graph, k for the k-th). The branches read the weights as outer-scope initializers, stored once: an initializer of a
later graph with the same type, shape and bytes as one already kept is that one (the methods share their modules'
weights, quantized deterministically, so every weight matrix is stored once). One file, one session, one copy of
the weights in memory; a method is the graph's inputs plus its fixed ``branch`` value, which the manifest records
(``"value"`` on that input) and the runner feeds.

The graphs must return the same outputs (names, element types): an ``If`` has one output list. Inputs are the
union (the first graph's order first); an input a later graph declares with another static shape of the same size
(the clustered tables: flat for the lookup's row gather, per KV head for the exact tail) is fed in the first graph's
shape and reshaped inside that branch (no copy).
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, List, Sequence

SELECTOR = "branch"


def _static_shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return [d.dim_value for d in dims]


def _tensor_key(tensor) -> tuple:
    from onnx import numpy_helper

    data = numpy_helper.to_array(tensor)
    return tensor.data_type, tuple(tensor.dims), hashlib.sha256(data.tobytes()).hexdigest()


def _rename_graph(graph, prefix: str, rename: Dict[str, str]):
    """Rename, in place, every value ``graph``'s nodes produce (and the node names) with ``prefix``; references
    to names in ``rename`` (initializers and reshaped inputs) are mapped, others (outer-scope inputs) stay.
    Subgraphs of the nodes (an If of the graph's own) are renamed alike."""
    produced = {o for n in graph.node for o in n.output if o}

    def new(name: str) -> str:
        if not name:
            return name
        if name in rename:
            return rename[name]
        if name in produced:
            return prefix + name
        return name

    for node in graph.node:
        node.name = prefix + node.name if node.name else node.name
        node.input[:] = [new(i) for i in node.input]
        node.output[:] = [new(o) for o in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                inner = dict(rename)
                inner.update({p: prefix + p for p in produced})
                _rename_graph(sub, prefix, inner)
    for vi in list(graph.value_info) + list(graph.output):
        vi.name = new(vi.name)


def merge_branches(models: Sequence, selector: str = SELECTOR):
    """One ModelProto whose output is ``models[k]``'s when the int64 input ``selector`` is k (see the module
    docstring)."""
    import onnx
    from onnx import TensorProto, helper

    from squeeze_mobile.errors import SqueezeError

    if len(models) < 2:
        raise ValueError("merge_branches needs two graphs or more")
    first = models[0]
    out_names = [o.name for o in first.graph.output]
    out_types = [o.type.tensor_type.elem_type for o in first.graph.output]
    for m in models[1:]:
        if [o.name for o in m.graph.output] != out_names or \
                [o.type.tensor_type.elem_type for o in m.graph.output] != out_types:
            raise SqueezeError("onnx holds one graph per file; methods whose graphs return different outputs cannot "
                               "share it (" + ", ".join(out_names) + " vs " +
                               ", ".join(o.name for o in m.graph.output) + ")")
    # the outer graph's inputs: the union, first graph's first; sizes must agree
    inputs: Dict[str, object] = {}
    for m in models:
        for vi in m.graph.input:
            if vi.name not in inputs:
                inputs[vi.name] = vi
    if selector in inputs:
        raise SqueezeError(f"a method input is named {selector!r}, the name of the branch selector")
    # the weights: one copy per distinct tensor
    initializers, by_key = [], {}
    branch_graphs = []
    for k, m in enumerate(models):
        prefix = f"b{k}/"
        g = onnx.GraphProto()
        g.CopyFrom(m.graph)
        rename: Dict[str, str] = {}
        for t in g.initializer:
            key = _tensor_key(t)
            if key in by_key:
                rename[t.name] = by_key[key]
                continue
            name = t.name if not any(t.name == i.name for i in initializers) and t.name not in inputs else prefix + t.name
            kept = onnx.TensorProto()
            kept.CopyFrom(t)
            kept.name = name
            initializers.append(kept)
            by_key[key] = name
            rename[t.name] = name
        reshapes = []
        for vi in g.input:
            outer = inputs[vi.name]
            mine, theirs = _static_shape(vi), _static_shape(outer)
            if mine is not None and theirs is not None and mine != theirs:
                if math.prod(mine) != math.prod(theirs):
                    raise SqueezeError(f"input {vi.name} has {theirs} in one method's graph and {mine} in another's")
                local = prefix + vi.name
                shape = helper.make_tensor(local + "__shape", TensorProto.INT64, [len(mine)], mine)
                reshapes.append(helper.make_node("Constant", [], [local + "__shape"], value=shape,
                                                 name=local + "__shape"))
                reshapes.append(helper.make_node("Reshape", [vi.name, local + "__shape"], [local],
                                                 name=local + "__reshape"))
                rename[vi.name] = local
        _rename_graph(g, prefix, rename)
        nodes = reshapes + list(g.node)
        outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) for o in g.output]
        branch_graphs.append(helper.make_graph(nodes, f"branch_{k}", [], outputs, value_info=list(g.value_info)))
    # the selector chain: If(branch == n-1) then graph n-1 else (If(branch == n-2) ... else graph 0)
    chain = branch_graphs[0]
    for k in range(1, len(branch_graphs)):
        last = k == len(branch_graphs) - 1
        outs = out_names if last else [f"sel{k}/{n}" for n in out_names]
        const = helper.make_node("Constant", [], [f"sel{k}/k"], value=helper.make_tensor(
            f"sel{k}/k_value", TensorProto.INT64, [1], [k]), name=f"sel{k}/k")
        equal = helper.make_node("Equal", [selector, f"sel{k}/k"], [f"sel{k}/is"], name=f"sel{k}/equal")
        cond = helper.make_node("Squeeze", [f"sel{k}/is"], [f"sel{k}/cond"], name=f"sel{k}/squeeze")
        node = helper.make_node("If", [f"sel{k}/cond"], outs, then_branch=branch_graphs[k], else_branch=chain,
                                name=f"sel{k}/if")
        if last:
            top_nodes = [const, equal, cond, node]
        else:
            chain = helper.make_graph([const, equal, cond, node], f"select_{k}", [],
                                      [helper.make_tensor_value_info(o, t, None) for o, t in zip(outs, out_types)])
    outer_inputs = list(inputs.values()) + [helper.make_tensor_value_info(selector, TensorProto.INT64, [1])]
    graph = helper.make_graph(top_nodes, first.graph.name, outer_inputs, list(first.graph.output),
                              initializer=initializers)
    opsets = {}
    for m in models:
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              ir_version=max(m.ir_version for m in models))
    functions = {}
    for m in models:
        for f in m.functions:
            functions.setdefault((f.domain, f.name, getattr(f, "overload", "")), f)
    model.functions.extend(functions.values())
    model.producer_name, model.producer_version = first.producer_name, first.producer_version
    return model


def walk_nodes(graph):
    """Every node of ``graph`` and of its nodes' subgraphs (If branches), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from walk_nodes(sub)


# nodes whose kernel time includes the nodes of their subgraphs (the profiler also lists those)
CONTROL_FLOW = ("If", "Loop", "Scan")


def branch_input_entry(value: int) -> Dict:
    """The manifest entry of the selector input for a method on branch ``value``."""
    return {"name": SELECTOR, "shape": [1], "dtype": "int64", "value": [value]}


__all__: List[str] = ["SELECTOR", "CONTROL_FLOW", "merge_branches", "branch_input_entry", "walk_nodes"]
