"""A corpus of hostile inputs for the CLI, and the command lines to run over it.

`build(root)` writes the files (bad models, FIFOs, links, pickled arrays, files that outputs must
not touch) into ``root``; `CASES` lists the commands, each with the exit status it must give, a
phrase its one stderr line must hold, and the only files it may create or change. Every command
runs with its working directory at ``root``, so the paths below are relative to it.

    python tests/hostile_corpus.py /tmp/corpus      # write the corpus to look at it by hand
"""
from __future__ import annotations

import os
import pickle
import stat
import sys
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(__file__))
from helpers import conv_bn_relu_model, make_model, tensor  # noqa: E402


@dataclass
class Case:
    name: str
    argv: list[str]
    rc: int = 2
    needle: str | None = None  # must appear in the one stderr line (errors only)
    writes: tuple[str, ...] = ()  # the files it may create or change
    timeout: float = 60.0
    slow: bool = False  # imports TVM or builds: run only with the slow tests
    xfail: str | None = None  # known to fail on this branch, fixed on another (says which)
    needs: str | None = None  # a corpus file that only root can make (skipped without it)


def build(root: str) -> None:
    """Write the corpus into the existing directory ``root``."""
    def path(*p):
        return os.path.join(root, *p)

    good = conv_bn_relu_model()
    onnx.save(good, path("good.onnx"))
    raw = good.SerializeToString()
    with open(path("truncated.onnx"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    with open(path("random.onnx"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    open(path("empty.onnx"), "wb").close()
    with open(path("tensor.onnx"), "wb") as f:  # a valid protobuf, of the wrong message type
        f.write(numpy_helper.from_array(np.ones((3, 3), np.float32), "t").SerializeToString())
    os.mkdir(path("adir.onnx"))
    os.symlink("good.onnx", path("link.onnx"))
    os.link(path("good.onnx"), path("hard.onnx"))
    os.mkfifo(path("fifo.onnx"))
    os.mkfifo(path("fifo.npz"))
    os.mkfifo(path("fifo.out"))
    os.mkfifo(path("fifo.out.so.json"))  # where a build's run plan would go
    try:
        os.mknod(path("null.dev"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        pass  # not root: the case that needs it is skipped

    os.mkdir(path("ext"))
    onnx.save_model(conv_bn_relu_model(seed=1), path("ext", "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    with open(path("sib.onnx.data"), "wb") as f:  # someone else's file beside an output
        f.write(b"not tvmlite's data\n")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    np.savez(path("in.npz"), x=x, label=np.array([0, 1, 2, 3]))
    np.savez(path("labels2.npz"), x=x, label=np.array([0, 1]))
    np.savez(path("labels2d.npz"), x=x, label=np.zeros((4, 3), np.int64))
    np.savez(path("pickled.npz"), x=np.array([{"a": 1}, None], dtype=object))
    os.mkdir(path("calibdir"))
    np.save(path("calibdir", "x.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with open(path("calibdir", "evil.pkl"), "wb") as f:
        pickle.dump({"a": 1}, f)

    # loads in onnxruntime, fails when run: the target shape comes from an input
    rt = make_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
                    [tensor("x", [4]), tensor("s", [2], TensorProto.INT64)], [tensor("y", ["a", "b"])])
    onnx.save(rt, path("rt.onnx"))
    np.savez(path("rt.npz"), x=np.ones(4, np.float32), s=np.array([3, 3], np.int64))
    with open(path("precious.txt"), "w") as f:
        f.write("an unrelated file that no command may touch\n")


LONG_NAME = "n" * 300 + ".onnx"
OPT = ["optimize", "good.onnx", "--preset", "clean"]

CASES: list[Case] = [
    # -------------------------------------------------------------- outputs over inputs (data loss)
    Case("json-over-model", OPT + ["-o", "o.onnx", "--json", "good.onnx"], needle="refusing to overwrite"),
    Case("o-over-external-data", ["optimize", "ext/model.onnx", "-o", "ext/weights.bin", "--preset", "clean"],
         needle="external data"),
    Case("json-equals-o", OPT + ["-o", "o.onnx", "--json", "o.onnx"], needle="same file"),
    # a null device of the corpus's own, never /dev/null: code with the bug replaces the node
    Case("o-is-chardev", ["run", "good.onnx", "-o", "null.dev"], needle="character device", needs="null.dev"),
    Case("o-is-fifo", ["run", "good.onnx", "-o", "fifo.out"], needle="FIFO"),
    Case("o-is-directory", ["run", "good.onnx", "-o", "adir.onnx"]),
    Case("json-missing-dir", OPT + ["-o", "o.onnx", "--json", "nodir/r.json"], needle="does not exist"),
    Case("o-over-inputs", ["run", "good.onnx", "--inputs", "in.npz", "-o", "in.npz"], needle="refusing to overwrite"),
    Case("o-symlink-to-model", ["optimize", "good.onnx", "-o", "link.onnx"], needle="refusing to overwrite"),
    Case("o-hardlink-to-model", ["optimize", "good.onnx", "-o", "hard.onnx"], needle="refusing to overwrite"),
    Case("o-over-model-from-link", ["optimize", "link.onnx", "-o", "good.onnx"], needle="refusing to overwrite"),
    Case("data-beside-output", ["optimize", "ext/model.onnx", "-o", "sib.onnx", "--preset", "clean"], rc=0,
         writes=("sib.onnx",)),  # written inline (small): sib.onnx.data, someone else's, is left alone
    Case("build-plan-is-fifo", ["build", "good.onnx", "-o", "fifo.out.so"], needle="FIFO"),
    Case("build-over-model", ["build", "good.onnx", "-o", "good.onnx"], needle="must end in .so"),
    Case("emit-over-file", ["emit-tvm", "good.onnx", "-o", "precious.txt", "--shape", "x=1x3x4x4"]),
    Case("run-o-over-calib", ["optimize", "good.onnx", "--calib", "in.npz", "-o", "in.npz"],
         needle="refusing to overwrite"),
    # ---------------------------------------------------------------------- bad output paths
    Case("o-trailing-slash", ["run", "good.onnx", "-o", "newdir/"], needle="not a directory"),
    Case("o-long-name", ["run", "good.onnx", "-o", LONG_NAME], needle="longer than"),
    Case("o-missing-dir", ["optimize", "good.onnx", "-o", "no/such/o.onnx"], needle="does not exist"),
    Case("o-under-a-file", ["run", "good.onnx", "-o", "precious.txt/o.npz"], needle="not a directory"),
    # -------------------------------------------------------------------------- hostile inputs
    *[Case(f"{cmd}-{bad}", [cmd, f"{bad}.onnx"] + extra, needle=needle)
      for cmd, extra in (("inspect", []), ("run", []), ("compare", ["--repeats", "0"]),
                         ("optimize", ["-o", "o.onnx"]), ("build", ["-o", "o.so"]), ("emit-tvm", ["-o", "kdir"]))
      for bad, needle in (("truncated", "not a valid ONNX model"), ("random", "not a valid ONNX model"),
                          ("empty", "empty"), ("tensor", "not a valid ONNX model"),
                          ("fifo", "not a regular file"))],
    Case("model-is-dir", ["inspect", "adir.onnx"]),
    Case("model-missing", ["run", "nosuch.onnx"], needle="not found"),
    Case("inputs-fifo", ["run", "good.onnx", "--inputs", "fifo.npz"], needle="not a regular file"),
    Case("inputs-pickled", ["run", "good.onnx", "--inputs", "pickled.npz"], needle="pickled.npz"),
    Case("calib-pickled-dir", ["optimize", "good.onnx", "-o", "o.onnx", "--passes", "quantize",
                               "--calib", "calibdir", "--shape", "x=1x3x4x4"], needle="calib"),
    Case("labels-2d", ["compare", "good.onnx", "--inputs", "labels2d.npz", "--labels", "label"],
         needle="one class per example"),
    Case("labels-too-few", OPT + ["-o", "o.onnx", "--inputs", "labels2.npz", "--labels", "label"],
         needle="2 labels for 4"),
    Case("shape-1e23", ["run", "good.onnx", "--shape", "x=" + "1" + "0" * 23 + "x3x4x4"], needle="larger than"),
    Case("shape-rank-100", ["run", "good.onnx", "--shape", "x=" + "x".join(["1"] * 100)], needle="rank 100"),
    Case("shape-2e62", ["run", "good.onnx", "--shape", f"x={2**62}x3x4x4"], needle="larger than"),
    Case("shape-too-many-elements", ["run", "good.onnx", "--shape", f"x={2**30}x{2**30}x4x4"], needle="elements"),
    Case("inspect-shape-rank", ["inspect", "good.onnx", "--shape", "x=1x3"], needle="rank 2"),
    Case("ort-runtime-failure", ["run", "rt.onnx", "--backend", "ort", "--inputs", "rt.npz"],
         needle="onnxruntime failed to run"),
    # ----------------------------------------------------------------------------------- options
    Case("max-error-negative", OPT + ["-o", "o.onnx", "--max-error", "-1"], needle="--max-error"),
    Case("max-error-nan", OPT + ["-o", "o.onnx", "--max-error", "nan"], needle="--max-error"),
    Case("max-error-inf", OPT + ["-o", "o.onnx", "--max-error", "inf"], needle="--max-error"),
    Case("max-drop-negative", OPT + ["-o", "o.onnx", "--max-accuracy-drop", "-0.5"], needle="--max-accuracy-drop"),
    Case("max-drop-nan", OPT + ["-o", "o.onnx", "--max-accuracy-drop", "nan"], needle="--max-accuracy-drop"),
    Case("rtol-nan", ["compare", "good.onnx", "--rtol", "nan"], needle="--rtol"),
    Case("passes-empty", ["optimize", "good.onnx", "-o", "o.onnx", "--passes", ""], needle="--passes is empty"),
    Case("passes-commas", ["optimize", "good.onnx", "-o", "o.onnx", "--passes", ",,"], needle="--passes is empty"),
    Case("passes-100k", ["optimize", "good.onnx", "-o", "o.onnx", "--passes", "dce," * 25000], needle="longer than"),
    Case("passes-many", ["optimize", "good.onnx", "-o", "o.onnx", "--passes", "dce," * 500], needle="more than"),
    Case("passes-deep-parens", ["optimize", "good.onnx", "-o", "o.onnx", "--passes", "dce" + "(" * 300 + ")" * 300],
         needle="nested deeper"),
    Case("passes-unbalanced", ["optimize", "good.onnx", "-o", "o.onnx", "--passes", "dce(("], needle="unbalanced"),
    Case("unknown-option", ["run", "good.onnx", "--frobnicate"], needle="No such option"),
    # ------------------------------------------------------------------------ correct commands
    Case("ok-inspect", ["inspect", "good.onnx", "--json"], rc=0),
    Case("ok-debug-after-command", ["inspect", "good.onnx", "--debug"], rc=0),
    Case("ok-run-out", ["run", "good.onnx", "--inputs", "in.npz", "-o", "out.npz"], rc=0, writes=("out.npz",)),
    Case("ok-run-ort", ["run", "good.onnx", "--backend", "ort", "-o", "ort.npz"], rc=0, writes=("ort.npz",)),
    Case("ok-compare", ["compare", "good.onnx", "--inputs", "in.npz", "--labels", "label", "--repeats", "1"], rc=0),
    Case("ok-optimize", OPT + ["-o", "opt.onnx", "--json", "rep.json"], rc=0, writes=("opt.onnx", "rep.json")),
    Case("ok-optimize-external", ["optimize", "ext/model.onnx", "-o", "ext/opt.onnx", "--preset", "clean"], rc=0,
         writes=("ext/opt.onnx",)),
    Case("ok-optimize-via-link", ["optimize", "link.onnx", "-o", "via_link.onnx", "--preset", "clean"], rc=0,
         writes=("via_link.onnx",)),
    Case("ok-passes", ["passes"], rc=0),
    Case("ok-build", ["build", "good.onnx", "-o", "lib.so", "--shape", "x=1x3x4x4"], rc=0,
         writes=("lib.so", "lib.so.json", "lib.so.npz"), slow=True, timeout=300),
    Case("ok-emit-tvm", ["emit-tvm", "good.onnx", "-o", "kernels", "--shape", "x=1x3x4x4"], rc=0,
         writes=("kernels",), slow=True, timeout=300),
]


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus"
    os.makedirs(target, exist_ok=False)
    build(target)
    print(f"wrote the hostile corpus to {target} ({len(CASES)} command lines in tests/hostile_corpus.py)")
