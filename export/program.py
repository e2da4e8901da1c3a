"""What a backend exports: a program of one or more named methods with named inputs and outputs.

SqueezeTime is one method (``forward``: ``input`` -> ``logits``). The decoder is two (``prefill`` over a
padded question, ``decode`` of one token) that share mutable state where the format has it (ExecuTorch
mutable buffers) and take it as explicit inputs/outputs where it has not (ONNX). Formats that hold one graph
per file (ONNX) export one graph for all methods when the methods differ only in a dimension marked
``dynamic`` (the decoder's token count); the manifest maps each method onto that graph.

The same names travel to the runners: ``Runner.run(method, {name: array}) -> {name: array}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple


@dataclass
class Method:
    name: str                      # 'forward', 'prefill', 'decode'
    module: "object"               # torch.nn.Module whose forward takes the inputs by name
    inputs: Dict[str, "object"]    # name -> example tensor, in call order
    outputs: List[str]
    # input name -> {axis: (symbol, min, max)}: axes a format may leave symbolic (a one-graph format: its one graph
    # serves every method; a format with dynamic shapes: this method takes any size in the range). The backend says
    # which it did: signature(dynamic=True) records the ranges in the manifest, where the runtime loops read them.
    dynamic: Dict[str, Dict[int, Tuple[str, int, int]]] = field(default_factory=dict)
    # {input name: value} -> the module's keyword arguments (e.g. per-layer inputs gathered into one list
    # argument); None: the names are the keywords. Applied to example tensors and to dynamic-shape specs alike.
    arrange: Optional[Callable[[Dict], Dict]] = None

    def call_kwargs(self, values: Dict) -> Dict:
        return self.arrange(values) if self.arrange is not None else dict(values)

    def dynamic_shapes(self) -> Optional[Dict]:
        """torch.export's ``dynamic_shapes`` for the keyword arguments (None without dynamic axes)."""
        if not self.dynamic:
            return None
        import torch

        dims = {n: {axis: torch.export.Dim(sym, min=lo, max=hi) for axis, (sym, lo, hi) in axes.items()}
                for n, axes in self.dynamic.items()}
        return self.call_kwargs({n: dims.get(n) for n in self.inputs})

    def signature(self, dynamic: bool = False) -> Dict:
        """Names, shapes and dtypes of the inputs (for the manifest and the runners); with ``dynamic``, an input
        with symbolic axes also lists them: ``"dynamic": {axis: [min, max]}`` (its shape is the example's)."""
        inputs = []
        for n, t in self.inputs.items():
            entry = {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
            if dynamic and self.dynamic.get(n):
                entry["dynamic"] = {str(axis): [lo, hi] for axis, (_, lo, hi) in self.dynamic[n].items()}
            inputs.append(entry)
        return {"inputs": inputs, "outputs": list(self.outputs)}


@dataclass
class Program:
    methods: List[Method]
    state: List[str] = field(default_factory=list)   # mutable buffers shared by the methods (ExecuTorch)

    def method(self, name: str) -> Method:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def names(self) -> List[str]:
        return [m.name for m in self.methods]

    def one_graph(self) -> Optional[Method]:
        """The method to export as the single graph of a one-graph format: the widest method, with its dynamic
        axes left symbolic (the others must be the same module at other sizes of those axes)."""
        groups = self.graphs()
        return groups[0][0] if groups is not None and len(groups) == 1 else None

    def graphs(self) -> Optional[List[Tuple[Method, List[Method]]]]:
        """The methods grouped by module, in method order: (the group's graph -- its widest method, dynamic axes
        left symbolic --, the group's methods). A one-graph format exports one graph per group (ONNX: branches
        of one file). None where a group's methods differ in more than a dynamic axis (none of them dynamic)."""
        groups: List[List[Method]] = []
        for m in self.methods:
            for g in groups:
                if g[0].module is m.module:
                    g.append(m)
                    break
            else:
                groups.append([m])
        out = []
        for g in groups:
            widest = max(g, key=lambda m: sum(int(t.numel()) for t in m.inputs.values()))
            if len(g) > 1 and not widest.dynamic:
                return None
            out.append((widest, g))
        return out


__all__ = ["Method", "Program"]
