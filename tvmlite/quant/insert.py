"""Writing QuantizeLinear/DequantizeLinear nodes for a QDQ plan (tvmlite/quant/qdq.py): the scale and
zero point of each activation, Q/DQ pairs around tensors, constant weights as DQ of int8."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tvmlite.errors import UnsupportedError
from tvmlite.ir.builder import Builder
from tvmlite.ir.graph import Model
from tvmlite.quant.params import affine_params

if TYPE_CHECKING:
    from tvmlite.quant.qdq import QuantSpec


class Inserter:
    def __init__(self, model: Model, spec: QuantSpec):
        self.model = model
        self.g = model.graph
        #: every Q/DQ node and scale is made here: one name authority for the whole insertion
        self.b = Builder(model)
        self.spec = spec
        self.params: dict[str, tuple[str, str]] = {}  # tensor -> (scale name, zp name)
        self.dq_of: dict[str, str] = {}  # float-produced tensor -> its dequantized copy
        self.ranges = dict(spec.ranges)  # folding re-points ranges; the spec stays reusable

    def tensor_params(self, name: str, source: str, clip_hi: float | None = None) -> tuple[str, str]:
        if name in self.params:
            return self.params[name]
        if source in self.params:
            self.params[name] = self.params[source]
            return self.params[name]
        rng = self.ranges.get(source)
        if rng is None:
            raise UnsupportedError(f"no calibration range for tensor {source!r}")
        lo, hi = rng
        if clip_hi is not None:
            lo, hi = 0.0, min(hi, clip_hi)
        scale, zp = affine_params(lo, hi, self.spec.activation_type)
        s = self.b.const(np.asarray(scale, np.float32), f"{name}_scale").name
        z = self.b.const(np.asarray(zp), f"{name}_zp").name
        self.params[name] = (s, z)
        return s, z

    def rescaled_params(self, name: str, source: str, factor: float) -> tuple[str, str]:
        """``name`` = ``source`` * ``factor``: the same codes and zero point, the scale times factor."""
        s, z = self.params[source]
        scale = np.float32(float(self.g.const_value(s)) * factor)
        self.params[name] = (self.b.const(np.asarray(scale, np.float32), f"{name}_scale").name, z)
        return self.params[name]

    def scale_of(self, name: str) -> float:
        return float(self.g.const_value(self.params[name][0]))

    def quantize_produced(self, name: str) -> None:
        """``name`` is written by an int8 node: it writes ``name_f``; Q then DQ give ``name`` back."""
        g = self.g
        s, z = self.params[name]
        declared = g.value(name).type
        was_output = [i for i, o in enumerate(g.outputs) if o == name]
        raw = self.b.value_name(f"{name}_float")
        g.rename_value(name, raw)
        q = self.b.op.QuantizeLinear(raw, s, z, name_hint=f"{name}_Q", outputs=[f"{name}_q"]).name
        self.b.make_node("DequantizeLinear", [q, s, z], [name], name_hint=f"{name}_DQ")
        g.value(name).type = declared
        for reader in g.consumers(raw):
            if reader.op_type == "QuantizeLinear" and reader.outputs[0] == q:
                continue
            g.set_inputs(reader, [name if n == raw else n for n in reader.inputs])
            if raw in reader.implicit_inputs:  # If/Loop bodies keep reading the name they read
                for sg in reader.subgraphs:
                    sg._rename_outer(raw, name)
                g.subgraph_changed(reader)
        for i in was_output:
            g.outputs[i] = name

    def dequantized(self, name: str) -> str:
        """The DQ(Q(x)) copy of a float-produced tensor (or graph input) for int8 readers."""
        if name not in self.dq_of:
            g = self.g
            s, z = self.params[name]
            q = self.b.op.QuantizeLinear(name, s, z, name_hint=f"{name}_Q", outputs=[f"{name}_q"])
            dq = self.b.op.DequantizeLinear(q, s, z, name_hint=f"{name}_DQ", outputs=[f"{name}_dq"])
            dq.type = g.value(name).type
            self.dq_of[name] = dq.name
        return self.dq_of[name]

    def per_axis_dq(self, name: str, channels: int, axis: int) -> str:
        """``name`` (the output of a per-tensor DequantizeLinear) dequantized again from the same codes
        with its scale and zero point repeated ``channels`` times along ``axis``: the same floats, but
        not the per-tensor DQ that onnxruntime's WeightBiasQuantization looks for (qdq.keep_float)."""
        key = f"{name}@{axis}x{channels}"
        if key not in self.dq_of:
            g = self.g
            dq = g.producer(name)
            q, s = dq.inputs[0], dq.inputs[1]
            z = dq.inputs[2] if len(dq.inputs) > 2 else ""
            scale = np.full(channels, g.const_value(s).reshape(()), np.float32)
            inputs = [q, self.b.const(scale, f"{name}_scale_{axis}")]
            if z:
                zp = g.const_value(z)
                inputs.append(self.b.const(np.full(channels, zp.reshape(()), zp.dtype), f"{name}_zp_{axis}"))
            out = self.b.op.DequantizeLinear(*inputs, attrs={"axis": int(axis)}, name_hint=f"{name}_DQ_{axis}",
                                             outputs=[f"{name}_dq_{axis}"])
            out.type = g.value(name).type
            self.dq_of[key] = out.name
        return self.dq_of[key]

    def constant_dq(self, array: np.ndarray, base: str, q: np.ndarray, scale: np.ndarray,
                    zp: np.ndarray, axis: int | None, default_zero_point: bool = False) -> str:
        """``default_zero_point``: leave a zero point of zeros out (the default). onnxruntime still
        fuses Conv's weight and bias DQ so, not Gemm's (measured: no QGemm then)."""
        b = self.b
        inputs = [b.const(q, f"{base}_q"),
                  b.const(scale.reshape(-1) if axis is not None else scale.reshape(()), f"{base}_scale")]
        if np.any(zp) or not default_zero_point:
            inputs.append(b.const(zp.reshape(-1) if axis is not None else zp.reshape(()), f"{base}_zp"))
        attrs = {"axis": int(axis)} if axis is not None else {}
        return b.op.DequantizeLinear(*inputs, attrs=attrs, name_hint=f"{base}_DQ", outputs=[f"{base}_dq"]).name
