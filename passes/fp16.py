"""float16 weights: every float32 weight (initializer or Constant) is stored as float16 and Cast back
to float32 where it is read, halving the file; onnxruntime folds the Casts at load, so compute stays
float32 and as fast as before. (Running activations in float16 is not done here: onnxruntime's CPU
provider lacks float16 kernels for Conv and most ops on x86.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from passes.base import Pass, PassResult, register_pass
from passes.cleanup import DeadCodeElimination, is_onnx
from tvmlite.ir.graph import Model, tensor_type

FLOAT = 1


@register_pass
class Float16Weights(Pass):
    name = "fp16"

    @dataclass
    class Options:
        #: weights smaller than this stay float32 (a Cast costs more than it saves)
        min_elements: int = 16

    def run(self, model: Model) -> PassResult:
        result = PassResult(self.name)
        g = model.graph
        names = [n for n in g.initializers if n not in g.inputs]
        names += [n.outputs[0] for n in g.toposort() if is_onnx(n, "Constant")]
        for name in names:
            a = g.const_value(name)
            if a is None or a.dtype != np.float32 or a.size < self.options.min_elements or name in g.outputs:
                continue
            if np.isfinite(a).all() and np.abs(a).max() > 65504:
                result.skip(name, "values beyond float16's range")
                continue
            readers = g.consumers(name)
            if not readers:
                continue
            half = g.add_constant(a.astype(np.float16), f"{name}_fp16")
            back = g.fresh_name(f"{name}_fp32")
            g.add_node("Cast", [half], [back], {"to": FLOAT}, name=g.fresh_name(f"{name}_Cast"))
            g.value(back).type = tensor_type(np.float32, a.shape)
            for reader in readers:
                g.set_inputs(reader, [back if n == name else n for n in reader.inputs])
            result.count("weights_fp16")
        DeadCodeElimination().run(model)
        return result
