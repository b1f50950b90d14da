"""The int8 GEMM's inner dot step (kernels/qgemm.py): which instruction, its tensor intrinsic and
the weight layout it reads.

Three steps, each ``lanes`` int32 accumulators (output channels) adding ``group`` products of
uint8 activations (broadcast) with weights packed [N/lanes, K/group, lanes, group]:

- ``int8_vnni``: one AVX-512 `vpdpbusd`, 16 lanes x 4 (u8 x s8 products summed in int32). TVM
  0.27's own `dot_16x4_vnni` declares it with int32 vector operands, which the LLVM it ships rejects
  (the intrinsic now takes <64 x i8>); `tvmlite_vnni_16x4` passes byte vectors.
- ``int8_avx2_u8`` (AVX2 without VNNI, where LLVM aborts the process on `vpdpbusd`): `vpmaddubsw`
  (u8 x s8, the 2 products of each byte pair summed into int16, saturating) then `vpmaddwd` by ones
  (the int16 pairs summed into int32), 8 lanes x 4. Exact only where no pair sum can saturate: each
  pair of weights it multiplies, (k, k+1) for even k, has positive parts summing to at most 128 and
  negative parts to at most 128 (255 * 128 = 32640 <= 32767), as 7-bit weights (|w| <= 63, what
  reduce_range quantization writes) always do. Weights are build-time constants, so
  `bytes_exact` checks every pair when the kernel is built and the step is chosen only then.
- ``int8_avx2``: the exact fallback, one `vpmaddwd` on int16 weights and activations, 8 lanes x 2.

Measured on Zen 1 (one thread, CPU time, interleaved, load 12-15; `TVMLITE_THREADS=1
bench/bench_tvm_int8.py --only gemm --cpu [--gemm-shape M,K,N]`, which also runs the 7-bit weights
through the int16 step): where the weights stream from memory the byte step, reading half the
bytes, is faster (GEMV 1 x 1024 x 4096: 1.87x the int16 step; 8 x 1024 x 4096: 1.22x); where the
GEMM is compute-bound it is not (1024^3: 1.00x; convs 64->64 3x3 and 32->64 1x1 at 80x80, 128->128
3x3 at 20x20: 0.98-0.99x): Zen 1 runs vector integer multiplies on one pipe, so `vpmaddubsw` +
`vpmaddwd` costs what two `vpmaddwd` do (hand-written C micro-kernels, 4 x 2 tiles: 17.8 against
17.7 GMAC/s). Widening the int16 pair sums without the second multiply (xor, shift and two adds
into two accumulators) measured slower there (14.5 GMAC/s). CPUs that issue both multiplies on
two pipes (Intel since Skylake) should gain on compute-bound GEMMs too: not measured.
"""
from __future__ import annotations

import numpy as np

VNNI = "tvmlite_vnni_16x4"
AVX2 = "tvmlite_avx2_8x2"
AVX2_U8 = "tvmlite_avx2_u8_8x4"
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


def register_avx2_u8() -> str:
    """Register the AVX2 `vpmaddubsw` + `vpmaddwd`(ones) tensor intrinsic once; returns its name.
    Its description claims exact int32 products: valid only for weights `bytes_exact` accepts."""
    if AVX2_U8 in _registered:
        return AVX2_U8
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a_u8 = T.reinterpret(T.broadcast(a_i32, 8), dtype="uint8x32")
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a_u8,
                                            B.vload([0, 0], dtype="int8x32"), dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.broadcast(T.int16(1), 16),
                dtype="int32x8")
    return _register_once(AVX2_U8, _dot_desc(8, 4, "uint8", "int8"), impl)


def bytes_exact(w2: np.ndarray) -> bool:
    """Whether `vpmaddubsw` on int8 weights [K, N] (K padded with zeros to even) is exact for every
    uint8 activation: in each pair (k, k+1), k even, along K, as the step pairs the bytes, the
    positive weights sum to at most 128 and the negative ones to at least -128, so no int16 pair
    sum 255 * (w_k + w_k+1) leaves [-32768, 32767]."""
    w = np.asarray(w2, np.int32)
    if w.shape[0] % 2:
        w = np.concatenate([w, np.zeros((1,) + w.shape[1:], np.int32)])
    pos = np.maximum(w, 0).reshape(-1, 2, *w.shape[1:]).sum(axis=1)
    neg = np.maximum(-w, 0).reshape(-1, 2, *w.shape[1:]).sum(axis=1)
    return bool(w.size == 0 or (pos.max() <= 128 and neg.max() <= 128))


class DotStep:
    """The int8 GEMM's inner instruction: ``lanes`` int32 accumulators each adding ``group``
    products per step, the weights packed [N/lanes, K/group, lanes, group] as ``w_dtype``, the
    activations read as ``a_dtype``. ``vnni``: `vpdpbusd`; else ``u8`` (`bytes_exact` weights):
    `vpmaddubsw` + `vpmaddwd`; else `vpmaddwd` on int16."""

    def __init__(self, vnni: bool, u8: bool = False):
        self.vnni, self.u8 = vnni, bool(u8) and not vnni
        if vnni:
            self.lanes, self.group, self.w_dtype, self.step = 16, 4, np.int8, "int8_vnni"
        elif self.u8:
            self.lanes, self.group, self.w_dtype, self.step = 8, 4, np.int8, "int8_avx2_u8"
        else:
            self.lanes, self.group, self.w_dtype, self.step = 8, 2, np.int16, "int8_avx2"
        # the int16 step reads the activations as int16 too: one broadcast load per row and step
        # (widening 2 bytes there took 4 instructions beside 2 vpmaddwd)
        self.a_dtype = "int16" if self.w_dtype == np.int16 else "uint8"

    def register(self) -> str:
        if self.vnni:
            return register_vnni()
        return register_avx2_u8() if self.u8 else register_avx2()


def dot_step(w2: np.ndarray | None = None) -> DotStep:
    """VNNI's step where the CPU has it, else AVX2's byte step when the int8 weights [K, N] ``w2``
    cannot saturate it (`bytes_exact`), else AVX2's int16 step."""
    from tvmlite.backends.tvm.kernels.target import has_vnni

    if has_vnni():
        return DotStep(True)
    return DotStep(False, u8=w2 is not None and bytes_exact(w2))
