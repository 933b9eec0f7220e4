"""ONNX simplification with the input shapes fixed: onnxslim, shape inference, and `If` folding.

Files from PaddlePaddle, TensorFlow or older PyTorch exporters compute shapes at run time and branch on
them; once the shapes are fixed those subgraphs are constant. What TVM's importer then receives is a
graph with every shape known and every constant-condition `If` replaced by the branch it takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .frontend import TensorSpec


def simplify_onnx(model, specs: list[TensorSpec], notes: list[str], problems: list[str] | None = None):
    """Fix the input shapes in the graph and fold shape subgraphs and constant `If`s so TVM's importer accepts them.

    `problems` collects `If` branches found invalid for the fixed shapes (used to explain an import failure).
    """
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    by_name = {s.name: s for s in specs}
    for inp in fixed.graph.input:
        if inp.name in by_name:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, by_name[inp.name].shape):
                d.Clear()
                d.dim_value = v
    # Values whose shape was dynamic must be re-inferred from the fixed inputs.
    del fixed.graph.value_info[:]
    for out in fixed.graph.output:
        out.type.tensor_type.ClearField("shape")
    # Scalars are left out: onnxslim cannot parse an empty dimension list, and the graph already says 0-d.
    input_shapes = [f"{s.name}:{','.join(map(str, s.shape))}" for s in specs if s.shape]
    return _simplify_fixed(fixed, input_shapes, notes, problems=problems)


def _slim_and_infer(model, input_shapes: list[str] | None, notes: list[str], where: str = "the model"):
    import onnx
    import onnxslim

    try:
        slim = onnxslim.slim(model, input_shapes=input_shapes or None)
        if slim is not None:
            model = slim
    except Exception as exc:  # onnxslim is an optimisation; import may still work without it
        notes.append(f"onnxslim could not simplify {where} ({type(exc).__name__}: {exc}); imported as is")
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        notes.append(f"ONNX shape inference failed on {where} ({exc}); imported without it")
    return model


# Bounds on the fold/simplify rounds: each round removes at least one If, and Ifs nest only a few deep.
_MAX_IF_ROUNDS = 16
_MAX_IF_DEPTH = 6


def _simplify_fixed(model, input_shapes: list[str] | None, notes: list[str], where: str = "the model", depth: int = 0,
                    problems: list[str] | None = None):
    """onnxslim + shape inference, then inline every `If` whose condition became constant, until none is left.

    onnxslim folds most constant-condition `If`s itself, but not those whose condition only becomes
    constant after an earlier fold, nor any when it fails; what remains (a condition on a runtime
    input) keeps its `If`, and each branch is simplified on its own (see `_simplify_if_branches`).
    """
    model = _slim_and_infer(model, input_shapes, notes, where)
    for _ in range(_MAX_IF_ROUNDS):
        if not _inline_constant_ifs(model.graph):
            break
        model = _slim_and_infer(model, input_shapes, notes, where)
    if depth < _MAX_IF_DEPTH and any(n.op_type == "If" for n in model.graph.node):
        _simplify_if_branches(model, notes, depth, problems if problems is not None else [])
    return model


def _constant_values(graph, names: set[str]) -> dict[str, np.ndarray]:
    """Values of those `names` that are initializers or Constant node outputs of the graph."""
    from onnx import helper, numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.name in names}
    for node in graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.output[0] not in names:
            continue
        a = node.attribute[0]
        if a.name == "value":
            values[node.output[0]] = numpy_helper.to_array(a.t)
        elif a.name in ("value_int", "value_float", "value_ints", "value_floats"):
            values[node.output[0]] = np.array(helper.get_attribute_value(a))
    return values


def _inline_constant_ifs(graph) -> int:
    """Replace each `If` of `graph` whose condition is a constant by the nodes of the branch it takes.

    The branch's outputs reach the `If`'s output names through Identity nodes (onnxslim removes
    them) rather than by renaming, because a branch output may also be an outer value or be read
    inside nested branches. ONNX names are unique across scopes, so the inlined names cannot clash.
    """
    from onnx import helper

    consts = _constant_values(graph, {n.input[0] for n in graph.node if n.op_type == "If" and n.input})
    if not consts:
        return 0
    nodes, inlined = [], 0
    for node in graph.node:
        cond = consts.get(node.input[0]) if node.op_type == "If" else None
        if cond is None or cond.size != 1:
            nodes.append(node)
            continue
        name = "then_branch" if bool(cond.reshape(())) else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == name)
        graph.initializer.extend(branch.initializer)
        nodes.extend(branch.node)
        for src, dst in zip(branch.output, node.output):
            if dst:
                nodes.append(helper.make_node("Identity", [src.name], [dst], name=f"{node.name}/{name}/{dst}"))
        inlined += 1
    if inlined:
        del graph.node[:]
        graph.node.extend(nodes)
    return inlined


def _free_names(graph) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for a in node.attribute:
            if a.HasField("g"):
                used |= _free_names(a.g)
        defined.update(node.output)
    return used - defined


def _simplify_if_branches(model, notes: list[str], depth: int, problems: list[str]) -> None:
    """Simplify, in place, each branch of the `If`s left in the main graph as a model of its own.

    TVM imports a runtime `If` as a Relax `If`, but onnxslim does not look inside branches, so shape
    subgraphs there (Shape -> Gather -> Reshape, nested `If`s on shapes) would reach the importer. A
    branch becomes a standalone model whose inputs are the outer values it reads, with the shapes
    shape inference gave them; a branch that reads an outer value of unknown shape is left as it is.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    outer_consts = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            outer_consts[t.name] = t
    types = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    for node in graph.node:
        if node.op_type != "If":
            continue
        for attr in node.attribute:
            if not attr.HasField("g"):
                continue
            branch = attr.g
            where = f"branch {attr.name} of If node '{node.name}'"
            free = sorted(_free_names(branch))
            inputs, inits = [], []
            for name in free:
                if name in outer_consts:
                    inits.append(outer_consts[name])
                elif name in types and _static_type(types[name]):
                    inputs.append(types[name])
                else:
                    notes.append(f"{where} reads '{name}', whose shape is unknown; branch imported as is")
                    break
            else:
                outputs = []
                for out in branch.output:
                    vi = onnx.ValueInfoProto()
                    vi.CopyFrom(out)
                    vi.type.tensor_type.ClearField("shape")  # re-inferred from the fixed inputs
                    outputs.append(vi)
                sub = helper.make_model(
                    helper.make_graph(list(branch.node), branch.name or attr.name, inputs, outputs,
                                      [*inits, *branch.initializer]),
                    opset_imports=list(model.opset_import), ir_version=model.ir_version,
                )
                sub = _simplify_fixed(sub, None, notes, where, depth + 1, problems)
                invalid = _strict_inference_error(sub)
                if invalid:
                    problems.append(
                        f"the {attr.name} of If node '{node.name}', chosen at run time from "
                        f"{_describe_sources(graph, node.input[0]) if depth == 0 else 'a run-time value'}, is invalid for the fixed input shapes ({invalid})"
                    )
                if set(_free_names(sub.graph)) - set(free) or [o.name for o in sub.graph.output] != [o.name for o in branch.output]:
                    notes.append(f"{where}: simplification renamed values; branch imported as is")
                    continue
                # Outer constants copied in for folding stay in the outer scope; new constants go into the branch.
                kept = [i for i in sub.graph.initializer
                        if i.name not in outer_consts or i.SerializeToString() != outer_consts[i.name].SerializeToString()]
                new = helper.make_graph(list(sub.graph.node), branch.name, [], list(sub.graph.output), kept,
                                        value_info=list(sub.graph.value_info))
                branch.CopyFrom(new)


def _strict_inference_error(model) -> str | None:
    """The first error strict ONNX shape inference finds in `model`, as 'OP node 'NAME': message', or None."""
    import re

    import onnx

    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        return None
    except Exception as exc:
        text, kind = str(exc), type(exc).__name__
    # Errors nest ("Inference error(s): (op_type:If ...): ... (op_type:LSTM, node name: N): message"): the innermost says why.
    for m in re.finditer(r"\(op_type:(\w+)(?:, node name: ([^)]*))?\): \[\w+\] ([^\n]*)", text):
        if not m.group(3).startswith("Inference error"):
            node = f"{m.group(1)} node '{m.group(2)}'" if m.group(2) else f"a {m.group(1)} node"
            return f"{node}: {m.group(3).strip()}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else kind


def _describe_sources(graph, name: str) -> str:
    """The graph inputs a value is computed from, e.g. "input 'sr'", or "a value computed in the graph"."""
    producers = {o: n for n in graph.node for o in n.output}
    graph_inputs = {i.name for i in graph.input}
    seen, stack, found = set(), [name], []
    while stack:
        v = stack.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v in graph_inputs:
            found.append(v)
        elif v in producers:
            stack.extend(producers[v].input)
    if not found:
        return "a value computed in the graph"
    return ("input " if len(found) == 1 else "inputs ") + ", ".join(f"'{v}'" for v in sorted(found))


def _static_type(vi) -> bool:
    """A tensor type whose every dimension is a known number (0-d included)."""
    tt = vi.type.tensor_type
    return vi.type.HasField("tensor_type") and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)
