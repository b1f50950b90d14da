"""The geometry of a Conv / ConvTranspose / pooling window, built in one place.

ONNX leaves most of it to defaults (strides and dilations 1, pads 0, kernel shape from the weights,
``auto_pad`` resolved against the input's spatial shape). :class:`WindowGeometry` resolves them
once; kernels (NumPy and TVM), shape rules and passes take it instead of re-deriving the defaults
from raw attributes or passing ten loose integers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from tvmlite.errors import ShapeError, UnsupportedError
from tvmlite.ops.conv_shapes import (_norm, conv_output_shape, conv_transpose_pads, kernel_geometry,
                                     resolve_pads)


class EmptyWindowError(ShapeError, UnsupportedError):
    """The window leaves no output position (onnxruntime refuses such a node too). A ShapeError for
    the user; also an UnsupportedError, so code that leaves unsupported nodes alone skips it."""


@dataclass(frozen=True)
class WindowGeometry:
    """Resolved window geometry over ``n`` spatial dims: every field explicit, ``pads`` as
    ``(begins..., ends...)``, ``out_spatial`` the output's spatial shape."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    group: int = 1
    ceil_mode: bool = False

    @property
    def n(self) -> int:
        return len(self.kernel)

    @property
    def pad_begin(self) -> tuple[int, ...]:
        return self.pads[: self.n]

    @property
    def pad_end(self) -> tuple[int, ...]:
        return self.pads[self.n:]

    @property
    def effective_kernel(self) -> tuple[int, ...]:
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))

    @property
    def padded(self) -> bool:
        return any(self.pads)

    @property
    def pointwise(self) -> bool:
        """A 1x1 window with stride 1 and no padding: the conv is one matmul."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides) and not self.padded

    @classmethod
    def conv(cls, attrs: Mapping, x_shape: Sequence[int], w_shape: Sequence[int]) -> "WindowGeometry":
        """Conv geometry from the node's attributes and the input / weight shapes."""
        n = len(x_shape) - 2
        if n < 1 or len(w_shape) != n + 2:
            raise UnsupportedError(f"Conv input rank {len(x_shape)} and weight rank {len(w_shape)} do not fit")
        kernel, strides, dilations = kernel_geometry(
            w_shape, n, attrs.get("kernel_shape"), attrs.get("strides"), attrs.get("dilations"))
        return cls._build(attrs, x_shape, kernel, strides, dilations, _group(attrs), False)

    @classmethod
    def conv_transpose(cls, attrs: Mapping, x_shape: Sequence[int], w_shape: Sequence[int]) -> "WindowGeometry":
        """ConvTranspose geometry: ``in_spatial`` is the input's, ``out_spatial`` the (larger) output's,
        ``pads`` the crop of the full scatter result, ``output_padding`` and ``output_shape``
        resolved per the ONNX spec."""
        n = len(x_shape) - 2
        if n < 1 or len(w_shape) != n + 2:
            raise UnsupportedError(f"ConvTranspose input rank {len(x_shape)} and weight rank "
                                   f"{len(w_shape)} do not fit")
        kernel, strides, dilations = kernel_geometry(
            w_shape, n, attrs.get("kernel_shape"), attrs.get("strides"), attrs.get("dilations"))
        in_spatial = [int(d) for d in x_shape[2:]]
        pads, out = conv_transpose_pads(attrs.get("auto_pad"), in_spatial, kernel, strides, dilations,
                                        attrs.get("pads"), _norm(attrs.get("output_padding"), n, 0),
                                        attrs.get("output_shape"))
        geo = cls(tuple(kernel), tuple(strides), tuple(dilations), tuple(pads), tuple(in_spatial),
                  tuple(int(o) for o in out), _group(attrs), False)
        if any(o <= 0 for o in geo.out_spatial):
            raise EmptyWindowError(f"output spatial shape {list(geo.out_spatial)} is empty (input "
                                   f"{list(x_shape)}, kernel {kernel}, pads {list(pads)})")
        return geo

    @classmethod
    def pool(cls, attrs: Mapping, x_shape: Sequence[int]) -> "WindowGeometry":
        """Pooling geometry (MaxPool / AveragePool / LpPool) from attributes and the input shape."""
        kernel = attrs.get("kernel_shape")
        if not kernel:
            raise UnsupportedError("pooling needs kernel_shape")
        n = len(kernel)
        if len(x_shape) != n + 2:
            raise UnsupportedError(f"kernel_shape {list(kernel)} does not fit input rank {len(x_shape)}")
        strides = [int(s) for s in (attrs.get("strides") or [1] * n)]
        dilations = [int(d) for d in (attrs.get("dilations") or [1] * n)]
        return cls._build(attrs, x_shape, [int(k) for k in kernel], strides, dilations, 1,
                          bool(attrs.get("ceil_mode", 0)))

    @classmethod
    def _build(cls, attrs, x_shape, kernel, strides, dilations, group, ceil_mode) -> "WindowGeometry":
        in_spatial = [int(d) for d in x_shape[2:]]
        pads = resolve_pads(attrs.get("auto_pad"), in_spatial, kernel, strides, dilations, attrs.get("pads"))
        out = conv_output_shape(in_spatial, kernel, strides, dilations, pads, ceil_mode)
        if any(o <= 0 for o in out):  # onnxruntime refuses it too
            raise EmptyWindowError(f"output spatial shape {out} is empty (input {list(x_shape)}, kernel "
                                   f"{list(kernel)}, pads {pads}, strides {list(strides)})")
        return cls(tuple(kernel), tuple(strides), tuple(dilations), tuple(pads), tuple(in_spatial),
                   tuple(out), group, ceil_mode)


def _group(attrs: Mapping) -> int:
    group = attrs.get("group")
    group = 1 if group is None else int(group)
    if group < 1:
        raise UnsupportedError(f"group={group} must be at least 1")
    return group
