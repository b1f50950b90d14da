"""What a saved VAD artifact (tests/real_graphs.py, If + Loop) holds: its weights, its .npz, the
distinct TVM constant tensors after load (body models included) and the resident growth of a
second load + run in a fresh process (the first load pays for the imports).

    PYTHONPATH=$PWD .venv/bin/python bench/vad_memory.py [--hidden 512]

The If's branches each hold what follows the If (control.sink_into_branches), the LSTM weights
among them: this shows whether they are stored and held once.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

_CHILD = """
import os, shutil, sys, tempfile
import numpy as np
from tvmlite.backends.tvm import load_module

def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

def copy(src):
    d = tempfile.mkdtemp()
    for ext in ('', '.json', '.npz'):
        shutil.copyfile(src + ext, d + '/m.so' + ext)
    return d + '/m.so'

def run(path):
    m = load_module(path)
    feeds = {n: np.zeros(s, m.input_dtypes[n]) for n, s in m.input_shapes.items()}
    feeds['sr'] = np.array(16000, np.int64)
    m.run(feeds)
    return m

a, b = copy(sys.argv[1]), copy(sys.argv[1])
keep = run(a)
r0 = rss()
m = run(b)
print((rss() - r0) / 1e6)
"""


def _tensors(cm, acc: dict) -> dict:
    """id -> bytes of every constant tensor of ``cm`` and of the body models its host calls run."""
    for t in cm._tensors.values():
        acc[id(t)] = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
    for fn, _ in cm._calls:
        body = getattr(fn, "body", None)
        for sub in (getattr(body, "models", None) or [body.m]) if body is not None else []:
            _tensors(sub, acc)
    return acc


def _weight_bytes(g) -> int:
    """Bytes of the initializers of GraphProto ``g`` and of its subgraphs (the If's branches, the
    Loop's body), each counted once as the model holds it."""
    own = sum(int(np.prod(i.dims)) * 4 for i in g.initializer)
    return own + sum(_weight_bytes(a.g) for n in g.node for a in n.attribute if a.type == a.GRAPH)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512, help="LSTM width (512: 4.8 MB of weights)")
    a = ap.parse_args(argv)
    from real_graphs import vad
    from tvmlite.backends.tvm import compile_model, load_module
    from tvmlite.frontend.onnx_import import import_model

    proto, shapes = vad(hidden=a.hidden)
    weights = _weight_bytes(proto.graph)
    d = tempfile.mkdtemp()
    try:
        path = os.path.join(d, "vad.so")
        compile_model(import_model(proto), dict(shapes, sr=())).save(path)
        m = load_module(path)
        held = sum(_tensors(m, {}).values())
        grown = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, check=True)
        print(f"VAD (If + Loop), hidden {a.hidden}: weights {weights / 1e6:.2f} MB, .npz "
              f"{os.path.getsize(path + '.npz') / 1e6:.2f} MB, distinct TVM constant tensors {held / 1e6:.2f} MB, "
              f"resident growth of a second load + run {float(grown.stdout.strip()):.1f} MB")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
