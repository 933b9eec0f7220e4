"""Writing TFLite flatbuffers by hand (the `tflite` package's generated builders), for tests that need a
model with exactly the operators, tensor types or quantization they exercise."""

from __future__ import annotations

import importlib
from pathlib import Path


def tfl(name: str):
    # `import tflite.Model` yields the class (the package re-exports it); the builder functions live in the module.
    return importlib.import_module(f"tflite.{name}")


def int_vector(b, start, values, kind: str = "Int32") -> int:
    start(b, len(values))
    for v in reversed(values):
        getattr(b, f"Prepend{kind}")(int(v))
    return b.EndVector()


def offset_vector(b, start, offsets) -> int:
    start(b, len(offsets))
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def write_tflite(path: Path, tensors: list[dict], ops: list[dict], inputs: list[int], outputs: list[int],
                 buffers: list[bytes]) -> Path:
    """A one-subgraph TFLite flatbuffer.

    tensors: {name, shape, type, buffer, sparsity?(builder)}; ops: {code | custom, inputs, outputs, options?(builder)};
    buffers[0] must be empty (TFLite's convention for tensors without data).
    """
    import flatbuffers

    Buffer, Tensor, Operator, OperatorCode, SubGraph, Model = (
        tfl(n) for n in ("Buffer", "Tensor", "Operator", "OperatorCode", "SubGraph", "Model"))
    CUSTOM = tfl("BuiltinOperator").BuiltinOperator.CUSTOM
    b = flatbuffers.Builder(1024)
    buffer_offsets = []
    for data in buffers:
        vec = b.CreateByteVector(data) if data else None
        Buffer.BufferStart(b)
        if vec is not None:
            Buffer.BufferAddData(b, vec)
        buffer_offsets.append(Buffer.BufferEnd(b))
    tensor_offsets = []
    for t in tensors:
        name, shape = b.CreateString(t["name"]), int_vector(b, Tensor.TensorStartShapeVector, t["shape"])
        sparsity = t["sparsity"](b) if t.get("sparsity") else None
        Tensor.TensorStart(b)
        Tensor.TensorAddShape(b, shape)
        Tensor.TensorAddType(b, t["type"])
        Tensor.TensorAddBuffer(b, t["buffer"])
        Tensor.TensorAddName(b, name)
        if sparsity is not None:
            Tensor.TensorAddSparsity(b, sparsity)
        tensor_offsets.append(Tensor.TensorEnd(b))
    keys = list(dict.fromkeys(op.get("custom") or op["code"] for op in ops))
    code_offsets = []
    for key in keys:
        custom = b.CreateString(key) if isinstance(key, str) else None
        code = CUSTOM if custom is not None else key
        OperatorCode.OperatorCodeStart(b)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        OperatorCode.OperatorCodeAddBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddVersion(b, 1)
        if custom is not None:
            OperatorCode.OperatorCodeAddCustomCode(b, custom)
        code_offsets.append(OperatorCode.OperatorCodeEnd(b))
    op_offsets = []
    for op in ops:
        ins = int_vector(b, Operator.OperatorStartInputsVector, op["inputs"])
        outs = int_vector(b, Operator.OperatorStartOutputsVector, op["outputs"])
        options = op["options"](b) if op.get("options") else None
        Operator.OperatorStart(b)
        Operator.OperatorAddOpcodeIndex(b, keys.index(op.get("custom") or op["code"]))
        Operator.OperatorAddInputs(b, ins)
        Operator.OperatorAddOutputs(b, outs)
        if options is not None:
            Operator.OperatorAddBuiltinOptionsType(b, options[0])
            Operator.OperatorAddBuiltinOptions(b, options[1])
        op_offsets.append(Operator.OperatorEnd(b))
    sg_tensors = offset_vector(b, SubGraph.SubGraphStartTensorsVector, tensor_offsets)
    sg_ops = offset_vector(b, SubGraph.SubGraphStartOperatorsVector, op_offsets)
    sg_in = int_vector(b, SubGraph.SubGraphStartInputsVector, inputs)
    sg_out = int_vector(b, SubGraph.SubGraphStartOutputsVector, outputs)
    SubGraph.SubGraphStart(b)
    SubGraph.SubGraphAddTensors(b, sg_tensors)
    SubGraph.SubGraphAddInputs(b, sg_in)
    SubGraph.SubGraphAddOutputs(b, sg_out)
    SubGraph.SubGraphAddOperators(b, sg_ops)
    subgraph = SubGraph.SubGraphEnd(b)
    m_subgraphs = offset_vector(b, Model.ModelStartSubgraphsVector, [subgraph])
    m_codes = offset_vector(b, Model.ModelStartOperatorCodesVector, code_offsets)
    m_buffers = offset_vector(b, Model.ModelStartBuffersVector, buffer_offsets)
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, m_codes)
    Model.ModelAddSubgraphs(b, m_subgraphs)
    Model.ModelAddBuffers(b, m_buffers)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path
