"""Which ops of a `.tflite` file the phone delegates take: the GPU delegate (by its rules, read
from the flatbuffer) and XNNPACK (by the real interpreter).

`gpu_check(path)` reads the file's op codes, op versions and tensor ranks / types with the
flatbuffer schema that ships with LiteRT (`ai_edge_litert.schema_py_generated`) and applies the
GPU delegate's rules for the ops this project's generators contain; every op it would leave on
the CPU is named with the rule it breaks. TF's own `tf.lite.experimental.Analyzer` with
`gpu_compatibility=True` calls even a lone GATHER_ND "compatible", so it cannot be the check.

The rules are those of google-ai-edge/LiteRT (read at commit f67457790):
- `tflite/delegates/gpu/common/model_builder.cc`: each `*OperationParser::IsSupported` (the
  highest op version it takes) and `GetOpsToReplace` (the tensor types each op may read and
  write; rank 5+ refused);
- `tflite/tools/versioning/gpu_compatibility.cc`: `CheckGpuDelegateCompatibility` (the
  per-op shape, type and option rules);
- `tflite/delegates/gpu/common/model_builder_helper.cc`: `ExtractTensorShape` (a runtime
  tensor must have rank 1 to 4: the 0-D scalars are refused when the graph is built).
The delegate is assumed built with its default options (quantized models allowed, so int8 /
uint8 tensors pass the type rule).

`xnnpack_check(path)` loads the file in LiteRT's interpreter twice, with and without its
default XNNPACK delegate, and counts the delegate's partitions and the ops left outside them.
"""

import collections
import os

# builtin op -> the highest version the GPU delegate's parser takes (model_builder.cc,
# `CheckMaxSupportedOpVersion` in each parser's IsSupported); None: no version check there
GPU_MAX_VERSION = {
    "ADD": 2, "SUB": 2, "DIV": 2, "MAXIMUM": 2, "MINIMUM": 2, "POW": 2, "SQUARED_DIFFERENCE": 2,
    "GREATER": 2, "GREATER_EQUAL": 2, "LESS": 2, "LESS_EQUAL": 2, "EQUAL": 2, "NOT_EQUAL": 2,
    "ABS": 2, "EXP": 2, "LOG": 2, "RSQRT": 2, "SQRT": 2, "SQUARE": 2, "TANH": 2, "LOGISTIC": 2,
    "NEG": 2, "FLOOR": 2, "ELU": 2, "GELU": 2,
    "MUL": 3, "CONV_2D": 6, "DEPTHWISE_CONV_2D": 6, "CONCATENATION": 2, "FULLY_CONNECTED": 9,
    "GATHER": 1, "PAD": 2, "PADV2": 2, "MIRROR_PAD": 2, "QUANTIZE": 2, "DEQUANTIZE": 3, "RESHAPE": 1,
    "RESIZE_NEAREST_NEIGHBOR": 3, "RESIZE_BILINEAR": 3, "SELECT_V2": 1, "SLICE": 2, "SOFTMAX": 2,
    "STRIDED_SLICE": 4, "TRANSPOSE": 4, "RELU": 2, "RELU6": 2, "LEAKY_RELU": 2,
    "AVERAGE_POOL_2D": 2, "MAX_POOL_2D": 2, "SPACE_TO_DEPTH": 2,
    "CAST": None, "MEAN": None, "SUM": None, "PACK": None, "TILE": None, "SPLIT": None,
    "SPLIT_V": None, "DEPTH_TO_SPACE": None, "TRANSPOSE_CONV": 3,
}
# the comparisons: their bool output is allowed (GetOpsToReplace, `IsLogicalCode`)
LOGICAL = {"GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL"}
# ops that take two operands, one of which may be a constant (gpu_compatibility.cc)
TWO_OPERAND = LOGICAL | {"SUB", "DIV", "MAXIMUM", "MINIMUM", "POW", "SQUARED_DIFFERENCE"}
UNARY = {"ABS", "EXP", "LOG", "RSQRT", "SQRT", "SQUARE", "TANH", "LOGISTIC", "NEG", "FLOOR", "ELU", "GELU"}
FLOAT = {"FLOAT32", "FLOAT16"}
QUANT = {"INT8", "UINT8"}


class Tensor(collections.namedtuple("Tensor", "index name shape type const")):
    """One tensor an op reads or writes: `shape` a tuple, `type` the schema's name
    ("FLOAT32", "INT32", ...), `const` whether its data is in the file."""

    @property
    def rank(self):
        return len(self.shape)


class Op(collections.namedtuple("Op", "index name version inputs outputs options")):
    """One op of the main subgraph, in execution order: builtin name, op version, its
    `Tensor`s and its builtin options object (schema object API; None when it has none)."""


def read_ops(path):
    """The ops of `path`'s main subgraph (`Op` list) and, per tensor index, the ops that read
    it (`consumers`: {tensor: [op index]}). A file that is not a TFLite flatbuffer is an error."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        buf = f.read()
    # bytes 4..8 of a TFLite flatbuffer are its file identifier
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ValueError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    model = schema.ModelT.InitFromPackedBuf(buf, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = model.subgraphs[0]

    def tensor(i):
        t = graph.tensors[i]
        buffer = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        # data inline, or (files over 2 GB) at an offset past the flatbuffer
        const = buffer is not None and (buffer.data is not None or (buffer.offset or 0) > 1)
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
        return Tensor(i, name, shape, type_names.get(t.type, str(t.type)), const)

    ops, consumers = [], collections.defaultdict(list)
    for k, op in enumerate(graph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        # builtin codes past 127 live in `builtinCode`; older files only fill the deprecated byte
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            name = f"CUSTOM({custom})"
        inputs = [tensor(i) for i in op.inputs if i >= 0]  # -1: an optional input left out
        for t in inputs:
            consumers[t.index].append(k)
        ops.append(Op(k, name, int(code.version), inputs, [tensor(i) for i in op.outputs], op.builtinOptions))
    return ops, dict(consumers)


def runtime(tensors):
    return [t for t in tensors if not t.const]


def fmt_shape(t):
    return "[" + ",".join(str(d) for d in t.shape) + "]"


def op_rule(op, ops, consumers):
    """The rule `op` breaks in the GPU delegate (a sentence), or None when it is taken."""
    name, ins, outs = op.name, op.inputs, op.outputs
    if name not in GPU_MAX_VERSION:
        return "not a GPU delegate op"
    limit = GPU_MAX_VERSION[name]
    if limit is not None and op.version > limit:
        what = " (its int8 kernel)" if any(t.type in QUANT for t in ins) else ""
        return f"op version {op.version}{what}, the GPU delegate takes up to version {limit}"
    # GetOpsToReplace: runtime inputs float (int8/uint8 quantized), with per-op exceptions
    allowed_in, allowed_out = FLOAT | QUANT, FLOAT | QUANT
    if name in LOGICAL:
        allowed_out = allowed_out | {"BOOL"}
    if name == "CAST":
        allowed_in, allowed_out = allowed_in | {"BOOL", "INT32"}, allowed_out | {"INT32", "BOOL"}
    if name == "SELECT_V2":
        allowed_in = allowed_in | {"BOOL"}
    if name == "GATHER":
        allowed_in = allowed_in | {"INT32"}
    for side, tensors, allowed in (("input", ins, allowed_in), ("output", outs, allowed_out)):
        for t in tensors:
            if t.rank >= 5:
                return f"{side} {fmt_shape(t)} has rank {t.rank}, the GPU delegate takes rank 1-4"
            if not t.const and t.type not in allowed:
                return (f"{t.type} {side} {t.name!r}, the GPU delegate's {name} takes "
                        f"{'/'.join(sorted(allowed))} runtime tensors")
            if not t.const and t.rank == 0:
                return (f"0-D (scalar) {side} {t.name!r}, the GPU delegate's graph takes runtime "
                        "tensors of rank 1-4")
    opts = op.options
    if name == "GATHER":
        if len(runtime(ins)) not in (1, 2) or len(outs) != 1:
            return "GATHER takes 1 or 2 operands and 1 output"
        idx = ins[1]
        if idx.rank != 1:
            return f"indices rank {idx.rank} {fmt_shape(idx)}, the GPU delegate takes 1-D int32 indices"
        if idx.type != "INT32":
            return f"{idx.type} indices, the GPU delegate takes 1-D int32 indices"
    elif name == "CAST":
        src, dst = ins[0].type, outs[0].type
        if src == "BOOL" and dst in FLOAT:
            # model_builder.cc CastOperationParser: bool -> float only right after a comparison
            # that nothing else reads, and not as a graph output
            producers = [o for o in ops if any(t.index == ins[0].index for t in o.outputs)]
            if (len(producers) != 1 or producers[0].name not in LOGICAL
                    or len(consumers.get(ins[0].index, [])) != 1
                    or len(consumers.get(outs[0].index, [])) != 1):
                return "bool -> float CAST that does not directly follow a comparison read by it alone"
        elif not ((src in FLOAT and dst == "BOOL") or (src in {"FLOAT32", "INT32"} and dst in {"FLOAT32", "INT32"})):
            return f"CAST {src} -> {dst}, the GPU delegate casts bool<->float and float32<->int32"
    elif name in LOGICAL and len(consumers.get(outs[0].index, [])) != 1:
        # model_builder.cc ElementwiseOperationParser: a comparison's output must have one reader
        return f"{name} output read by {len(consumers.get(outs[0].index, []))} ops, the GPU delegate takes one"
    if name in TWO_OPERAND | {"ADD", "MUL"}:
        if len(ins) != 2:
            return f"{name} takes two inputs"
        if name in TWO_OPERAND and len(runtime(ins)) not in (1, 2):
            return f"{name} with {len(runtime(ins))} runtime operands, the GPU delegate takes 1 or 2"
        a, b = ins
        if name in {"ADD", "MUL"} and a.rank > 1 and b.rank > 1 and a.rank != b.rank:
            long, short = (a, b) if a.rank > b.rank else (b, a)
            # kEnhancedBroadcast (what the offline check assumes; `CheckIsBroadcastable`): the
            # dims aligned from the last must be equal or either one 1
            tail = long.shape[-short.rank:]
            if any(s != d and 1 not in (s, d) for s, d in zip(short.shape, tail)):
                return f"{name} cannot broadcast {fmt_shape(a)} with {fmt_shape(b)}"
    elif name in UNARY:
        if len(runtime(ins)) != 1 or len(ins) != 1:
            return f"{name} takes one runtime input"
    elif name == "STRIDED_SLICE":
        for mask in ("ellipsisMask", "newAxisMask", "shrinkAxisMask"):
            if getattr(opts, mask, 0):
                return f"{mask[:-4]}_axis_mask set, the GPU delegate's STRIDED_SLICE takes none"
        if len(ins) < 4:
            return "STRIDED_SLICE takes 4 inputs"
        if ins[0].rank not in (3, 4):
            return f"input rank {ins[0].rank}, the GPU delegate's STRIDED_SLICE takes rank 3 or 4"
    elif name == "SLICE":
        if ins[0].rank not in (3, 4):
            return f"input rank {ins[0].rank}, the GPU delegate's SLICE takes rank 3 or 4"
    elif name in {"PAD", "PADV2", "MIRROR_PAD"}:
        if len(runtime(ins)) != 1:
            return f"{name} with runtime paddings, the GPU delegate takes constant ones"
        pads = ins[1]
        if pads.rank != 2 or pads.shape[0] not in (3, 4) or pads.shape[1] != 2:
            return f"paddings {fmt_shape(pads)}, the GPU delegate takes 3x2 or 4x2"
    elif name in {"MEAN", "SUM"}:
        if len(runtime(ins)) != 1 or not ins[1].const or ins[1].type != "INT32":
            return f"{name} takes one runtime input and constant int32 axes"
    elif name in {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"}:
        if len(runtime(ins)) not in (1, 2) or len(outs) != 1:
            return f"{name} takes 1 or 2 runtime inputs and 1 output"
        act = getattr(opts, "fusedActivationFunction", 0)
        if act == 5:  # ActivationFunctionType.SIGN_BIT
            return f"{name} fused SIGN_BIT activation"
    elif name in {"RESHAPE", "QUANTIZE", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "TILE", "TRANSPOSE"}:
        if len(runtime(ins)) != 1 or len(outs) != 1:
            return f"{name} takes one runtime input and one output"
        if name == "RESIZE_BILINEAR" and getattr(opts, "alignCorners", False) and getattr(opts, "halfPixelCenters", False):
            return "RESIZE_BILINEAR with both align_corners and half_pixel_centers"
    elif name == "DEQUANTIZE":
        if ins[0].type == "INT16":
            return "int16 DEQUANTIZE"
    elif name == "SOFTMAX":
        if getattr(opts, "beta", 1.0) != 1.0:
            return "SOFTMAX beta != 1"
    elif name in {"DEPTH_TO_SPACE", "SPACE_TO_DEPTH"} and getattr(opts, "blockSize", 2) <= 1:
        return f"{name} block_size {getattr(opts, 'blockSize', None)}, the GPU delegate takes > 1"
    return None


def gpu_check(path):
    """The GPU delegate's verdict on `path`: {"ok", "ops", "refused": [{"index", "op",
    "reason"}], "refused_by_op": {op: count}} (ok: no op refused)."""
    ops, consumers = read_ops(path)
    # fp16 files store weights as float16 constants, each read through a DEQUANTIZE: the GPU
    # delegate folds these into constants before partitioning (model_builder.cc, the fp16
    # graph-partition helper), so they and their outputs count as constants
    fp16 = {op.outputs[0].index for op in ops
            if op.name == "DEQUANTIZE" and op.inputs[0].const and op.inputs[0].type == "FLOAT16"}
    ops = [op._replace(inputs=[t._replace(const=True) if t.index in fp16 else t for t in op.inputs],
                       outputs=[t._replace(const=True) if t.index in fp16 else t for t in op.outputs])
           for op in ops]
    refused = []
    for op in ops:
        reason = op_rule(op, ops, consumers)
        if reason is not None:
            refused.append({"index": op.index, "op": op.name, "reason": reason})
    return {"ok": not refused, "ops": len(ops), "refused": refused,
            "refused_by_op": dict(collections.Counter(r["op"] for r in refused))}


def interpreter_nodes(path, delegate):
    """The interpreter's nodes as (index, op name, inputs, outputs), with or without XNNPACK."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {} if delegate else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = Interpreter(model_path=path, num_threads=1, **kw)
    it.allocate_tensors()  # the default delegate is applied here
    # `_get_ops_details` is private, but it is the interpreter's only view of its nodes (the
    # DELEGATE nodes included); the public API lists tensors only. clade_tf.export.int8 uses it too.
    return [(int(d["index"]), d["op_name"], [int(i) for i in d["inputs"]], [int(o) for o in d["outputs"]])
            for d in it._get_ops_details()]


def xnnpack_check(path):
    """XNNPACK's verdict on `path` from the real interpreter: {"ok", "ops" (all ops, without
    the delegate), "partitions" (the delegate's nodes), "outside": [{"index", "op"}] (ops the
    interpreter runs itself), "outside_by_op"} (ok: one partition, nothing outside)."""
    total = interpreter_nodes(path, delegate=False)
    nodes = interpreter_nodes(path, delegate=True)
    # the delegated interpreter keeps the original nodes and appends one DELEGATE node per
    # partition, whose inputs / outputs are the tensors entering / leaving it: the ops inside a
    # partition are those reached walking back from its outputs without crossing its inputs
    original = [n for n in nodes if n[1] != "DELEGATE"]
    producer = {o: n for n in original for o in n[3]}
    inside = set()
    partitions = [n for n in nodes if n[1] == "DELEGATE"]
    for _, _, ins, outs in partitions:
        stop, todo = set(ins), list(outs)
        while todo:
            t = todo.pop()
            n = producer.get(t)
            if t in stop or n is None or n[0] in inside:
                continue
            inside.add(n[0])
            todo.extend(n[2])
    outside = [{"index": i, "op": name} for i, name, _, _ in original if i not in inside]
    return {"ok": len(partitions) == 1 and not outside, "ops": len(total), "partitions": len(partitions),
            "outside": outside, "outside_by_op": dict(collections.Counter(o["op"] for o in outside))}


def check(path):
    """Both verdicts: {"gpu": gpu_check(path), "xnnpack": xnnpack_check(path)}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such .tflite file")
    return {"gpu": gpu_check(path), "xnnpack": xnnpack_check(path)}


def summary(result):
    """One line: the GPU delegate's refusals per op and XNNPACK's partitions / ops outside."""
    gpu, xnn = result["gpu"], result["xnnpack"]
    if gpu["ok"]:
        g = f"GPU delegate: all {gpu['ops']} ops"
    else:
        per = ", ".join(f"{n} {op}" for op, n in sorted(gpu["refused_by_op"].items()))
        g = f"GPU delegate: {len(gpu['refused'])} of {gpu['ops']} ops refused ({per})"
    x = f"XNNPACK: {xnn['partitions']} partition{'s' if xnn['partitions'] != 1 else ''}"
    if xnn["outside"]:
        per = ", ".join(f"{n} {op}" for op, n in sorted(xnn["outside_by_op"].items()))
        x += f", {len(xnn['outside'])} ops outside ({per})"
    return f"{g}; {x}"
