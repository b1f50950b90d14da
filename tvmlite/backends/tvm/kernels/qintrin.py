"""The int8 GEMM's inner dot step (kernels/qgemm.py): which instruction, its tensor intrinsic and
the weight layout it reads. Each step has ``lanes`` int32 accumulators (output channels) adding
``group`` products of activations (broadcast) with weights packed [N/lanes, K/group, lanes, group]:

- ``int8_vnni``: one AVX-512 `vpdpbusd`, 16 lanes x 4 (u8 x s8 products summed in int32). TVM
  0.27's own `dot_16x4_vnni` declares it with int32 vector operands, which the LLVM it ships rejects
  (the intrinsic now takes <64 x i8>); `tvmlite_vnni_16x4` passes byte vectors.
- ``int8_avx2`` (AVX2 without VNNI, where LLVM aborts the process on `vpdpbusd`): one `vpmaddwd`
  on int16 weights and activations, 8 lanes x 2. It is exact (AVX2's byte product `vpmaddubsw`
  saturates its int16 pair sums, 2 * 255 * 127 > 32767).
"""
from __future__ import annotations

import numpy as np

VNNI = "tvmlite_vnni_16x4"
AVX2 = "tvmlite_avx2_8x2"
_registered: set = set()


def _dot_desc(lanes: int, group: int, a_dtype: str, b_dtype: str):
    """The tensor intrinsics' description: C[i] += A[k] * B[i, k] in int32 over ``lanes`` x ``group``."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((group,), a_dtype, offset_factor=1), B: T.Buffer((lanes, group), b_dtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
    return desc


def _register_once(name: str, desc, impl) -> str:
    # not tvm.s_tir.tensor_intrin.x86's description: importing that package imports every
    # target's intrinsics (CUDA, ROCm, ...) and takes about a minute
    from tvm.s_tir import TensorIntrin

    if name not in _registered:
        try:
            TensorIntrin.register(name, desc, impl)
        except Exception:  # noqa: BLE001 - registered by an earlier import of this module
            pass
        _registered.add(name)
    return name


def register_vnni() -> str:
    """Register the VNNI tensor intrinsic once; returns its name."""
    if VNNI in _registered:
        return VNNI
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
                a_u8, B.vload([0, 0], dtype="int8x64"), dtype="int32x16")
    return _register_once(VNNI, _dot_desc(16, 4, "uint8", "int8"), impl)


def register_avx2() -> str:
    """Register the AVX2 `vpmaddwd` tensor intrinsic once; returns its name."""
    if AVX2 in _registered:
        return AVX2
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "int16", offset_factor=1), B: T.Buffer((8, 2), "int16", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            a_i32 = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
            a_i16 = T.reinterpret(T.broadcast(a_i32, 8), dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a_i16, B.vload([0, 0], dtype="int16x16"),
                dtype="int32x8")
    return _register_once(AVX2, _dot_desc(8, 2, "int16", "int16"), impl)


class DotStep:
    """The int8 GEMM's inner instruction: ``lanes`` int32 accumulators each adding ``group``
    products per step, the weights packed [N/lanes, K/group, lanes, group] as ``w_dtype``, the
    activations read as ``a_dtype``. ``vnni``: `vpdpbusd`, else `vpmaddwd` on int16."""

    def __init__(self, vnni: bool):
        self.vnni = vnni
        self.lanes, self.group, self.w_dtype = (16, 4, np.int8) if vnni else (8, 2, np.int16)
        # AVX2 reads the activations as int16 too: one broadcast load per row and step (widening
        # 2 bytes there took 4 instructions beside 2 vpmaddwd)
        self.a_dtype = "uint8" if vnni else "int16"
        self.step = "int8_vnni" if vnni else "int8_avx2"

    def register(self) -> str:
        return register_vnni() if self.vnni else register_avx2()


def dot_step(w2: np.ndarray | None = None) -> DotStep:
    """VNNI's step where the CPU has it, else AVX2's (``w2``: the int8 weights [K, N] it will run)."""
    from tvmlite.backends.tvm.kernels.target import has_vnni

    return DotStep(has_vnni())
