"""Bucketed enc.so vs exact-shape builds of the MiniLM encoder at a few lengths (interleaved medians).

    tvmlite build /tmp/tvmdyn/enc.onnx -o /tmp/tvmdyn/enc.so --shape input_ids=1x1..128 \
        --shape attention_mask=1x1..128 --buckets 16,32,64
    PYTHONPATH=$PWD python bench/bench_tvm_buckets.py 10 50 100 128
(enc.onnx: onnx.save(tvmlite.zoo_encoder.minilm_encoder()[0], ...); exact builds are written beside it.)
"""
import os, glob, time, sys
import numpy as np, onnxruntime as ort
import tvmlite
from tvmlite.backends.tvm import compile_model, load_module, buckets as bk
from tvmlite.compare import interleaved_ms

m = bk.BucketedModel("/tmp/tvmdyn/enc.so", bk.read_manifest("/tmp/tvmdyn/enc.so"), load_module)
print("table:", m.summary)
sess = ort.InferenceSession("/tmp/tvmdyn/enc.onnx")
size = sum(os.path.getsize(p) for p in glob.glob("/tmp/tvmdyn/enc.so*"))
print(f"bucketed artifact: {size/1e6:.1f} MB in {len(glob.glob('/tmp/tvmdyn/enc.so*'))} files")
for n in [int(a) for a in sys.argv[1:]]:
    rng = np.random.default_rng(n)
    ids = rng.integers(1000, 20000, (1, n)).astype(np.int64)
    f = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    t0 = time.perf_counter()
    ex = compile_model(tvmlite.load("/tmp/tvmdyn/enc.onnx"), {k: v.shape for k, v in f.items()}, cache=False)
    bt = time.perf_counter() - t0
    ex.save(f"/tmp/tvmdyn/ex{n}.so")
    esize = sum(os.path.getsize(p) for p in glob.glob(f"/tmp/tvmdyn/ex{n}.so*"))
    ref = sess.run(None, f)
    got = m.run(f)
    err = max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref))
    t = interleaved_ms([lambda: m.run(f), lambda: ex.run(f), lambda: sess.run(None, f)], 15)
    print(f"seq {n:>3}: bucketed {t[0]:7.2f} ms  exact {t[1]:7.2f} ms  ort {t[2]:7.2f} ms  "
          f"bucketed/exact {t[0]/t[1]:.2f}  (exact build {bt:.1f} s, {esize/1e6:.1f} MB; rel err vs ort {err:.1e})", flush=True)
