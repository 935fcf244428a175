"""The exported graph's optional input `logits_start`: from which position the logits are computed.

The graph returns the logits of every position, (B, T, V), which scoring a text needs. Generation
needs only the last position's: after a prompt or a slid window of T tokens, the other T - 1 rows of
the output layer (d_model x vocabulary, the largest matmul of a small model) are computed for
nothing, and onnxruntime runs every node of a graph whatever outputs are asked for.
`with_logits_start(proto)` makes the vocabulary matmul read its input through
`Slice(x, logits_start, end, axis=1)`, with `logits_start` a graph input that has a default:

- not fed, or `[0]`: every position, (B, T, V), as before (onnxruntime-genai and any other client
  that knows only the required inputs see the graph they always saw);
- `[-1]`: the last position only, (B, 1, V): what `decoder.runtime` feeds when generating.

The slice is put on the matmul's input, after anything that mixes positions (attention; for int8,
the activation quantization's scale over the whole tensor), so a position's logits are the same
numbers either way. A prompt or slid window costs 0.56-0.71x as much with it (`python -m
bench.prefill_logits BUNDLE`; figures in docs/deployment.md).

A graph whose output layer is not a matmul (or an int8 matmul) with a constant weight is left
unchanged (`with_logits_start` returns False); the runtime then slices the logits after the run, as
it does for a bundle exported before this input existed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from decoder.bundle import LOGITS, LOGITS_START

_ELEMENTWISE = {"Add", "Cast", "Div", "Mul", "Sub"}
"""Operations allowed between the vocabulary matmul and `logits`: position by position."""
_MATMULS = {"MatMul", "MatMulInteger"}


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers and what nodes make from initializers alone (e.g. the transposed output weight)."""
    constant = {i.name for i in graph.initializer}
    for node in graph.node:  # nodes are in topological order
        if node.input and all(not name or name in constant for name in node.input):
            constant.update(node.output)
    return constant


def _from_matmul(name: str, producer: dict[str, onnx.NodeProto], constant: set[str]) -> bool:
    """Whether `name` carries the matmul's rows (B, T, ...) rather than a per-tensor scale: its
    producers reach a matmul without passing through an activation quantization's scale."""
    node = producer.get(name)
    if node is None or name in constant:
        return False
    if node.op_type in _MATMULS:
        return True
    if node.op_type not in _ELEMENTWISE:
        return False
    return any(_from_matmul(i, producer, constant) for i in node.input if i)


def _head(graph: onnx.GraphProto) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """The vocabulary matmul and the nodes from it to `logits` (it included), or None when the
    graph's output layer is not of that form."""
    producer = {out: node for node in graph.node for out in node.output}
    constant = _constant_tensors(graph)
    chain, name = [], LOGITS
    while name in producer:
        node = producer[name]
        chain.append(node)
        if node.op_type in _MATMULS:
            if len(node.input) < 2 or node.input[1] not in constant or node.input[0] in constant:
                return None
            return node, chain
        if node.op_type not in _ELEMENTWISE:
            return None
        rows = [i for i in node.input if i and _from_matmul(i, producer, constant)]
        if len(rows) != 1:  # one input carries the positions; the others are constants or scales
            return None
        name = rows[0]
    return None


def with_logits_start(proto: onnx.ModelProto) -> bool:
    """Add the `logits_start` input to `proto` in place (see the module docstring); False when the
    output layer is not recognised or the input is there already (then `proto` is unchanged)."""
    graph = proto.graph
    found = _head(graph)
    if found is None or any(i.name == LOGITS_START for i in graph.input):
        return False
    matmul, chain = found
    source = matmul.input[0]
    sliced = f"{source}_from_{LOGITS_START}"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0], dtype=np.int64), LOGITS_START),  # the input's default
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], dtype=np.int64), f"{LOGITS_START}_end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{LOGITS_START}_axis"),
    ])
    graph.input.append(helper.make_tensor_value_info(LOGITS_START, TensorProto.INT64, [1]))
    slice_node = helper.make_node(
        "Slice", [source, LOGITS_START, f"{LOGITS_START}_end", f"{LOGITS_START}_axis"], [sliced],
        name=f"{LOGITS_START}_slice",
    )
    matmul.input[0] = sliced
    graph.node.insert(list(graph.node).index(matmul), slice_node)
    # the head's tensors may now be one position long: drop the exporter's shapes for them (the
    # output `logits` keeps [batch, seq, vocab], what it is at the default)
    changed = {out for node in chain for out in node.output} - {LOGITS}
    kept = [v for v in graph.value_info if v.name not in changed]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return True


def add_logits_start(path: Path) -> bool:
    """Rewrite the ONNX file at `path` with the `logits_start` input (`with_logits_start`);
    False, and the file untouched, when its output layer is not recognised."""
    proto = onnx.load(str(path))
    if not with_logits_start(proto):
        return False
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return True
