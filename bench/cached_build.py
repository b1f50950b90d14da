"""Cached TVM build of onnx light_* models, split into tvmlite.load(proto) and the cached
compile_model (what bench_tvm.py --only light prints as "cached build"), after one warm build;
medians of 3. Usage: PYTHONPATH=. python bench/cached_build.py vgg19 zfnet512 bvlc_alexnet [--prof]"""
import sys, time, statistics, cProfile, pstats
sys.path.insert(0, "bench"); sys.path.insert(0, "tests")
from models_under_test import frozen_light
import tvmlite
from tvmlite.backends.tvm import compile_model
prof = "--prof" in sys.argv
for name in [a for a in sys.argv[1:] if not a.startswith("--")]:
    proto, image, x = frozen_light(f"light_{name}.onnx")
    proto.ir_version = min(proto.ir_version, 10)
    cm = compile_model(tvmlite.load(proto), {image: x.shape}); del cm
    loads, comps = [], []
    for i in range(3):
        if prof and i == 2:
            pr = cProfile.Profile(); pr.enable()
        t0 = time.perf_counter(); m = tvmlite.load(proto); t1 = time.perf_counter()
        cm = compile_model(m, {image: x.shape}); t2 = time.perf_counter()
        assert cm.cached
        loads.append(t1 - t0); comps.append(t2 - t1); del cm, m
    print(f"{name}: cached build {statistics.median([a+b for a,b in zip(loads,comps)]):.2f} s "
          f"(load {statistics.median(loads):.2f}, compile {statistics.median(comps):.2f}) all {[round(a+b,2) for a,b in zip(loads,comps)]}", flush=True)
    if prof:
        pr.disable(); pstats.Stats(pr).sort_stats("tottime").print_stats(15)
