"""MiniLM encoder (seq 128, batch 1) on the TVM backend vs onnxruntime (2 threads): host ops, max
relative error, interleaved medians, and milliseconds per op kind (issue 15 item 3)."""
import time, numpy as np
from tvmlite.zoo_encoder import minilm_encoder
from tvmlite.frontend import load
from tvmlite.backends.tvm import compile_model
from tvmlite.runtime.ort import ort_session, interleaved_ms
m, tok = minilm_encoder()
feeds = {}
for i in m.graph.input:
    feeds[i.name] = np.ones((1, 128), np.int64) if i.name != "token_type_ids" else np.zeros((1, 128), np.int64)
feeds["input_ids"] = np.random.default_rng(0).integers(1000, 20000, (1, 128)).astype(np.int64)
t = time.time()
cm = compile_model(load(m), {k: v.shape for k, v in feeds.items()}, cache=False)
print("build s", round(time.time() - t, 1), cm.summary if hasattr(cm, "summary") else "")
print("host ops", cm.host_ops)
sess = ort_session(m, 2)
ref = sess.run(None, feeds)
got = cm.run(feeds)
for g, r in zip(got, ref):
    print("max rel err", float(np.abs(g - r).max() / np.abs(r).max()))
ms = interleaved_ms([lambda: cm.run(feeds), lambda: sess.run(None, feeds)], 30)
print("tvm ms %.2f ort ms %.2f ratio %.2f" % (ms[0], ms[1], ms[0] / ms[1]))
import collections, re
prof = cm.profile(feeds, repeats=5)
agg = collections.defaultdict(float)
for name, label, ms in prof:
    k = re.sub(r"^k\d+_", "", name).split("_")[0]
    agg[k] += ms
for k, v in sorted(agg.items(), key=lambda kv: -kv[1]):
    print(f"{k:24s} {v:8.2f} ms")
# per role across the six layers (layerN/ stripped): which kernel of the block costs what
roles = collections.defaultdict(lambda: [0.0, 0, ""])
for name, label, ms in prof:
    first = label.split(", ")[0]
    role = re.sub(r"^layer\d+/", "", first)
    roles[role][0] += ms
    roles[role][1] += 1
    roles[role][2] = label.replace(first.split("/")[0] + "/", "") if first.startswith("layer") else label
print(f"{'kernel (first node)':36s} {'n':>2s} {'ms':>7s}  nodes fused")
for role, (ms, n, label) in sorted(roles.items(), key=lambda kv: -kv[1][0]):
    print(f"{role:36s} {n:2d} {ms:7.2f}  {label[:90]}")
