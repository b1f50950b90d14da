"""Why a kernel failed: the rule of the op's definition that a node and its inputs break.

A NumPy kernel that gets inputs its op does not take fails with NumPy's own words ("operands could
not be broadcast together", "list index out of range", "integer won't fit into a C int"). The
backends call :func:`explain` on that path only, with the values the kernel got, to say which rule
the node breaks: an input type the op's schema does not allow (or two inputs of one type parameter
with different types), too many inputs, shapes that do not broadcast, an axis out of range, spatial
attributes (kernel_shape, strides, pads ...) that do not fit the input's rank, weights or
BatchNormalization parameters that do not fit the input's channels. None when no rule is broken
(the caller keeps the kernel's own message).
"""
from __future__ import annotations

import numpy as np

#: ops whose ``axis`` attribute names a dim of input 0 (range [-r, r - 1]); Flatten's reaches r
AXIS_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin", "Concat", "Gather",
                      "GatherElements", "ScatterElements", "Split", "LayerNormalization", "Compress",
                      "Flatten"})
#: ops with N x C x spatial inputs and per-spatial-dim attributes
SPATIAL_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "ConvInteger",
                         "QLinearConv"})
_SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
#: ``axis`` where the attribute is left out (Softmax's family: 1 before opset 13, -1 from 13 on)
_AXIS_DEFAULT = {"Softmax": 1, "LogSoftmax": 1, "Hardmax": 1, "ArgMax": 0, "ArgMin": 0, "Gather": 0,
                 "GatherElements": 0, "ScatterElements": 0, "Split": 0, "LayerNormalization": -1, "Flatten": 1}
_PER_DIM = ("kernel_shape", "strides", "dilations", "output_padding", "output_shape")


def explain(op_type: str, domain: str, opset: int | None, attrs: dict, inputs) -> str | None:
    """The rule ``op_type`` (of ``domain`` at ``opset``) breaks with these attributes and input
    values (NumPy arrays, None for an input left out), as one line, or None."""
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    for check in (_schema_rule, _axis_rule, _spatial_rule, _channels_rule, _matmul_rule, _reshape_rule,
                  _operand_rule):
        try:
            why = check(op_type, domain, opset, attrs, inputs)
        except Exception:  # noqa: BLE001 - a diagnosis must never hide the kernel's own error
            why = None
        if why:
            return why
    return None


def _type_name(v) -> str | None:
    """'float', 'int64', 'bool' ... of a NumPy array as ONNX names it; None for anything else."""
    if not isinstance(v, np.ndarray):
        return None
    from onnx import TensorProto, helper

    if v.dtype == object:
        return "string"
    try:
        return TensorProto.DataType.Name(helper.np_dtype_to_tensor_dtype(v.dtype)).lower()
    except (KeyError, ValueError, TypeError):
        return None


def _schema(op_type: str, domain: str, opset: int | None):
    import onnx.defs

    if domain not in ("", "ai.onnx") or opset is None:
        return None
    try:
        return onnx.defs.get_schema(op_type, int(opset), "")
    except onnx.defs.SchemaError:
        return None


def _schema_rule(op_type, domain, opset, attrs, inputs) -> str | None:
    """Input count, input types against the schema's type constraints, one type per type
    parameter, and multidirectional broadcasting where the schema says so."""
    schema = _schema(op_type, domain, opset)
    if schema is None:
        return None
    import onnx.defs

    formals = list(schema.inputs)
    variadic = bool(formals) and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
    if len(inputs) > schema.max_input:
        return f"{op_type}-{schema.since_version} takes at most {schema.max_input} inputs, got {len(inputs)}"
    allowed = {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}
    seen: dict[str, tuple[int, str]] = {}
    for i, v in enumerate(inputs):
        name = _type_name(v)
        if name is None or not formals:
            continue
        f = formals[min(i, len(formals) - 1)] if variadic else (formals[i] if i < len(formals) else None)
        if f is None:
            continue
        types = allowed.get(f.type_str, [f.type_str])
        if f"tensor({name})" not in types and not any(t.startswith(("seq", "optional", "map")) for t in types):
            short = [t[7:-1] if t.startswith("tensor(") else t for t in types]
            return (f"input {i} ({f.name}) is {name}; {op_type}-{schema.since_version} takes "
                    f"{', '.join(short)} there")
        if f.type_str in allowed and (not variadic or f is not formals[-1] or f.is_homogeneous):
            first = seen.setdefault(f.type_str, (i, name))
            if first[1] != name:
                return (f"input {i} is {name} but input {first[0]} is {first[1]}: {op_type} takes one type "
                        f"for both ({f.type_str})")
    if "multidirectional" in (schema.doc or "").lower():
        shapes = [v.shape for v in inputs if isinstance(v, np.ndarray)]
        try:
            np.broadcast_shapes(*shapes)
        except ValueError:
            return f"inputs of shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast together"
    return None


def _axis_rule(op_type, domain, opset, attrs, inputs) -> str | None:
    """``axis`` / ``axes`` attributes within the rank of input 0, axes without repeats; Concat's
    inputs of one rank and one shape outside the axis."""
    if domain not in ("", "ai.onnx") or not inputs or not isinstance(inputs[0], np.ndarray):
        return None
    r = inputs[0].ndim
    default = -1 if op_type in _SOFTMAX and (opset or 13) >= 13 else _AXIS_DEFAULT.get(op_type)
    if op_type in AXIS_OPS and attrs.get("axis", default) is not None:
        a = int(attrs.get("axis", default))
        hi = r if op_type == "Flatten" else r - 1
        if not -r <= a <= hi:
            return f"attribute axis={a} is out of range for input 0 of rank {r}"
        if op_type == "Concat":
            arrays = [v for v in inputs if isinstance(v, np.ndarray)]
            if len({v.ndim for v in arrays}) > 1:
                return f"inputs of ranks {[v.ndim for v in arrays]}: Concat takes inputs of one rank"
            ax = a % r if r else 0
            rest = {tuple(d for k, d in enumerate(v.shape) if k != ax) for v in arrays}
            if len(rest) > 1:
                return (f"input shapes {', '.join(str(list(v.shape)) for v in arrays)} differ outside "
                        f"axis {a}")
    if (op_type.startswith("Reduce") or op_type == "Squeeze") and attrs.get("axes") is not None:
        axes = [int(x) for x in np.asarray(attrs["axes"]).reshape(-1)]
        bad = [x for x in axes if not -r <= x < max(r, 1)]
        if bad:
            return f"attribute axes={axes}: {bad[0]} is out of range for input 0 of rank {r}"
        if len({x % max(r, 1) for x in axes}) != len(axes):
            return f"attribute axes={axes} names a dim twice"
        if op_type == "Squeeze" and any(inputs[0].shape[x] != 1 for x in axes):
            return f"attribute axes={axes} names a dim of input 0 {list(inputs[0].shape)} that is not 1"
    if op_type in ("ArgMax", "ArgMin") and r:
        a = int(attrs.get("axis", 0))
        if inputs[0].shape[a] == 0:
            return f"input 0 {list(inputs[0].shape)} is empty along axis {a}"
    return None


def _spatial_rule(op_type, domain, opset, attrs, inputs) -> str | None:
    """N x C x spatial input, and kernel_shape/strides/dilations/pads/output_padding with one value
    per spatial dim (two for pads), kernel sizes, strides and dilations >= 1, pads >= 0."""
    if op_type not in SPATIAL_OPS or domain not in ("", "ai.onnx") or not inputs:
        return None
    x = inputs[0]
    if not isinstance(x, np.ndarray):
        return None
    s = x.ndim - 2
    if s < 1:
        return f"input 0 has rank {x.ndim}; {op_type} takes N x C x D1 x ... (rank >= 3)"
    for name in _PER_DIM + ("pads",):
        if attrs.get(name) is None:
            continue
        v = [int(i) for i in np.asarray(attrs[name]).reshape(-1)]
        want = 2 * s if name == "pads" else s
        if len(v) != want:
            return f"attribute {name}={v} has {len(v)} values for {s} spatial dim(s) (needs {want})"
        if name in ("kernel_shape", "strides", "dilations") and min(v) < 1:
            return f"attribute {name}={v}: each value must be >= 1"
        if name in ("pads", "output_padding") and min(v) < 0:
            return f"attribute {name}={v}: each value must be >= 0"
    return None


def _channels_rule(op_type, domain, opset, attrs, inputs) -> str | None:
    """Conv/ConvTranspose weights and bias that fit input 0's channels and the group; the
    per-channel vectors of BatchNormalization/InstanceNormalization."""
    if domain not in ("", "ai.onnx") or len(inputs) < 2:
        return None
    x, w = inputs[0], inputs[1]
    if op_type in ("BatchNormalization", "InstanceNormalization"):  # x may be unknown (a prepare)
        vecs = [(i, v) for i, v in enumerate(inputs[1:], 1) if isinstance(v, np.ndarray)]
        if isinstance(x, np.ndarray) and x.ndim >= 2:
            c, whose = x.shape[1], "input 0's channels"
        elif vecs and vecs[0][1].ndim == 1:
            c, whose = vecs[0][1].shape[0], f"input {vecs[0][0]}'s length"
        else:
            c, whose = None, "a vector"
        for i, v in vecs:
            if c is None or v.shape != (c,):
                return f"input {i} has shape {list(v.shape)}; {op_type} needs [{c if c is not None else 'C'}] ({whose})"
        return None
    if not isinstance(x, np.ndarray) or not isinstance(w, np.ndarray) or x.ndim < 2:
        return None
    c = x.shape[1]
    if op_type in ("Conv", "ConvTranspose"):
        group = int(attrs.get("group", 1))
        if group < 1:
            return f"attribute group={group} must be >= 1"
        if w.ndim != x.ndim:
            return f"weight of shape {list(w.shape)} has rank {w.ndim}, input 0 {list(x.shape)} rank {x.ndim}"
        if op_type == "Conv":
            if w.shape[1] * group != c:
                return (f"input 0 has {c} channels; the weight {list(w.shape)} with group={group} takes "
                        f"{w.shape[1] * group}")
            n_out = w.shape[0]
            if n_out % group:
                return f"weight of {n_out} output channels does not split into group={group}"
        else:
            if w.shape[0] != c or c % group:
                return f"input 0 has {c} channels; the weight {list(w.shape)} with group={group} takes {w.shape[0]}"
            n_out = w.shape[1] * group
        b = inputs[2] if len(inputs) > 2 else None
        if isinstance(b, np.ndarray) and b.shape != (n_out,):
            return f"bias of shape {list(b.shape)} for {n_out} output channels (needs [{n_out}])"
    return None


def _matmul_rule(op_type, domain, opset, attrs, inputs) -> str | None:
    """MatMul's inputs of rank >= 1 whose inner dimensions agree."""
    if op_type not in ("MatMul", "MatMulInteger") or domain not in ("", "ai.onnx") or len(inputs) < 2:
        return None
    a, b = inputs[0], inputs[1]
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        return None
    if a.ndim == 0 or b.ndim == 0:
        return f"inputs of shapes {list(a.shape)} and {list(b.shape)}: MatMul takes inputs of rank >= 1"
    k_a, k_b = a.shape[-1], b.shape[-2] if b.ndim > 1 else b.shape[0]
    if k_a != k_b:
        return f"inputs of shapes {list(a.shape)} and {list(b.shape)}: inner dimensions {k_a} and {k_b} differ"
    return None


def _reshape_rule(op_type, domain, opset, attrs, inputs) -> str | None:
    """Reshape's shape: at most one -1, nothing below -1, a 0 (copy the dim) only within input 0's
    rank (unless allowzero)."""
    if op_type != "Reshape" or domain not in ("", "ai.onnx") or len(inputs) < 2:
        return None
    x, shape = inputs[0], inputs[1]
    if not isinstance(x, np.ndarray) or not isinstance(shape, np.ndarray):
        return None
    dims = [int(d) for d in shape.reshape(-1)]
    if dims.count(-1) > 1 or min(dims, default=0) < -1:
        return f"shape {dims}: at most one -1 and no value below -1"
    if not int(attrs.get("allowzero", 0)):
        beyond = [i for i, d in enumerate(dims) if d == 0 and i >= x.ndim]
        if beyond:
            return (f"shape {dims} copies dim {beyond[0]} (a 0) of input 0 {list(x.shape)}, which has "
                    f"rank {x.ndim}")
    return None


def _operand_rule(op_type, domain, opset, attrs, inputs) -> str | None:
    """Clip's min/max are scalars; Resize's scales/sizes have one value per dim of input 0 (per
    ``axes`` entry where given)."""
    if domain not in ("", "ai.onnx") or not inputs or not isinstance(inputs[0], np.ndarray):
        return None
    if op_type == "Clip":
        for i, v in enumerate(inputs[1:3], 1):
            if isinstance(v, np.ndarray) and v.size != 1:
                return f"input {i} ({('min', 'max')[i - 1]}) has shape {list(v.shape)}; Clip takes a scalar"
    if op_type == "Resize":
        axes = attrs.get("axes")
        want = len(np.asarray(axes).reshape(-1)) if axes is not None else inputs[0].ndim
        first = 1 if (opset or 11) < 11 else 2  # Resize-10: (X, scales); from 11: (X, roi, scales, sizes)
        for i, v in enumerate(inputs[first:], first):
            if isinstance(v, np.ndarray) and v.size and v.size != want:
                what = "scales" if i == first else "sizes"
                return f"input {i} ({what}) has {v.size} values for {want} dims of input 0 {list(inputs[0].shape)}"
    return None
