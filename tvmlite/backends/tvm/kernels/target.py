"""The host CPU as a TVM target, and TVM's thread pool sized to the cores we may use.

TVM 0.27 rejects option strings ("llvm -mcpu=..."), wants the dict form, and reads
TVM_NUM_THREADS only when its runtime first starts; `"mcpu": "native"` silently gives generic code
without AVX-512. So the CPU name comes from LLVM's own host detection (Target.from_device).
"""
from __future__ import annotations

import functools
import os


def host_threads() -> int:
    """Threads for TVM's pool: $TVMLITE_THREADS, else the cores this process may run on."""
    from tvmlite.limits import env_int

    if (os.environ.get("TVMLITE_THREADS") or "").strip():
        return max(1, env_int("TVMLITE_THREADS", 1))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# sched_yield calls an idle pool worker makes before it sleeps (TVM's default 300000 spun for
# 60-110 ms after each run on this 2-core AMD EPYC host: the CPU time of 50-100 digits-CNN runs
# burnt on another core by every run an application makes now and then, and a core taken from
# whatever runs next, onnxruntime's pool too). 10000 spin about 2 ms: the kernels of one run
# follow each other within microseconds, and back-to-back runs within the spin
POOL_SPIN_COUNT = 10000


# the user's $TVM_BIND_THREADS before import_tvm set its own ("" when unset; None before the first call)
_bind_asked = None


def import_tvm():
    """Import TVM with its thread pool sized first (TVM's default is half the hardware threads)."""
    global _bind_asked
    os.environ.setdefault("TVM_NUM_THREADS", str(host_threads()))
    if _bind_asked is None:
        _bind_asked = os.environ.get("TVM_BIND_THREADS", "").strip()
    # TVM's own binding, made when a thread's pool starts, numbers cores 0..n-1 whatever this
    # process may run on and narrows the calling thread's mask to them: off. `bound_cpus` and
    # plan_func.use_threads pin the workers of the pools the plans use instead
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(POOL_SPIN_COUNT))
    try:
        import tvm  # noqa: F401
        from tvm import te, s_tir  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a missing or broken install: say so in one line
        from tvmlite.errors import UnsupportedError

        raise UnsupportedError(f"the TVM backend needs apache-tvm 0.27 (import failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return tvm


def bound_cpus() -> list[int] | None:
    """The cores TVM's pool workers are pinned to, one each (plan_func._pin_off_caller: all but
    the one the calling thread runs on, which stays free over all of them): the calling thread's
    own mask, sorted; None where they stay unpinned ($TVM_BIND_THREADS=0 set by the user, one
    core, or no affinity calls).

    Why pin: unpinned, a worker woken after the process idles (a run after a pause, as a service's
    requests come) is often placed on the waking thread's core, and both halves of every parallel
    loop then run on one core until the scheduler moves one of them: the detector's first two runs
    after a 50 ms pause 5.3-6.1 and 4.7-5.4 ms, against 2.9 ms back to back; pinned 3.4 and 3.1 ms
    (2 threads, 2-vCPU Xeon under KVM, README). The cost: a pinned worker cannot leave a core another
    thread keeps busy. A plan whose runs stall so drops to one thread by itself (thread_choice);
    one kept on all threads ($TVMLITE_PICK_THREADS=0) does not: MiniLM run right after
    onnxruntime's runs in one process, whose pool spins on, 35 ms pinned, 21.6 ms unpinned, 11 quiet."""
    import_tvm()
    if _bind_asked == "0":
        return None
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return None
    return cpus if len(cpus) > 1 else None


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    """LLVM's name for this CPU (e.g. znver4, sapphirerapids); $TVMLITE_MCPU overrides it."""
    if os.environ.get("TVMLITE_MCPU"):
        return os.environ["TVMLITE_MCPU"]
    tvm = import_tvm()
    return str(tvm.target.Target.from_device(tvm.cpu()).attrs.get("mcpu", "")) or "x86-64-v3"


@functools.lru_cache(maxsize=None)
def host_target():
    tvm = import_tvm()
    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": host_threads()})


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The instruction-set flags /proc/cpuinfo reports for this machine's CPU (avx2, avx512f,
    avx512_vnni, ...); empty where it cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_int8_dot() -> bool:
    """Whether this CPU has a VNNI int8 dot product at any width (AVX-512 VNNI or AVX-VNNI): with it,
    onnxruntime's uint8 x int8 kernels sum in int32; without it they use `vpmaddubsw`, whose int16
    pair sums saturate (its quantization docs say so). `has_vnni` is the narrower question the
    kernels here ask (512-bit vpdpbusd)."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def vector_lanes() -> int:
    """float32 lanes of the widest vector unit: 16 with AVX-512, 8 with AVX2."""
    cpu = host_cpu()
    avx512 = ("skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake", "rocketlake",
              "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5", "cannonlake",
              "alderlake-avx512", "x86-64-v4")
    if any(cpu.startswith(p) for p in avx512):
        return 16
    return 16 if "avx512f" in cpu_flags() else 8


@functools.lru_cache(maxsize=None)
def has_vnni() -> bool:
    """Whether the int8 kernels may use AVX-512 VNNI (`vpdpbusd`): the target CPU has 512-bit
    vectors and this machine's CPU reports avx512_vnni. Without it (AVX2 machines such as Zen 1-3)
    LLVM aborts the whole process on the intrinsic, so the kernels use AVX2's `vpmaddwd` instead."""
    if vector_lanes() != 16:
        return False
    return "avx512_vnni" in cpu_flags()


#: the per-core L2 where the host does not say (Zen 1's 512 KiB, what the cache rules were first measured on)
L2_FALLBACK_BYTES = 512 * 1024


@functools.lru_cache(maxsize=None)
def l2_cache_bytes() -> int:
    """This host's per-core L2 cache in bytes, from Linux's sysfs (cpu0's level-2 data or unified
    cache: Zen 1 512 KiB, Sapphire Rapids 2 MiB); `L2_FALLBACK_BYTES` where it cannot be read."""
    import glob

    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(d, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data"):
            return parse_cache_size(size) or L2_FALLBACK_BYTES
    return L2_FALLBACK_BYTES


def parse_cache_size(text: str) -> int:
    """Bytes of a sysfs cache size ("2048K", "1M", "512"); 0 where it does not parse."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    return int(digits) * scale if digits.isdigit() else 0

