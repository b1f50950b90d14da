"""Fuzzing: mutated and truncated model files never end in a traceback.

Every mutated file goes through `tvmlite inspect`, `run` and `optimize` in-process. Each must exit
0 (the mutation was harmless), or 2 with one `tvmlite: error:` line; never an internal error, never
a traceback, never an output file from a failed run. A memory cap guards against a mutation that
asks for a huge tensor.
"""

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import cli_main, conv_bn_relu_model, memory_cap

SEED_MODEL = conv_bn_relu_model().SerializeToString()


def cli(args):
    return cli_main(*args)


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, len(SEED_MODEL) - 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, len(SEED_MODEL) - 1), st.integers(1, 255)),
                                        min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, len(SEED_MODEL)), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("splice"), st.integers(0, len(SEED_MODEL) - 1), st.integers(1, 200)),
)


def mutate(data: bytes, m) -> bytes:
    kind = m[0]
    if kind == "truncate":
        return data[: m[1]]
    if kind == "flip":
        b = bytearray(data)
        for pos, x in m[1]:
            b[pos] ^= x
        return bytes(b)
    if kind == "insert":
        return data[: m[1]] + m[2] + data[m[1]:]
    start, n = m[1], m[2]
    return data[:start] + data[start: start + n] * 2 + data[start + n:]


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(m=mutation)
@example(m=("flip", [(21, 0x80)]))  # a node name that is no longer UTF-8 (protobuf returns bytes)
def test_mutated_model_never_tracebacks(tmp_path, m):
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(mutate(SEED_MODEL, m))
    out_model = tmp_path / "out.onnx"
    with memory_cap():
        for args in (["inspect", path], ["run", path, "--backend", "numpy"],
                     ["optimize", path, "-o", out_model, "--shape", "x=1x3x4x4"]):
            rc, out, err = cli(args)
            assert "Traceback" not in err + out, (m, args, err)
            assert "internal error" not in err, (m, args, err)
            if rc != 0:
                assert rc in (1, 2), (m, args, rc, err)
                lines = [ln for ln in err.splitlines() if ln.strip()]
                assert len(lines) == 1 and lines[0].startswith("tvmlite: error:"), (m, args, err)
                if args[0] == "optimize":
                    assert not out_model.exists()
            elif args[0] == "optimize":
                onnx.checker.check_model(onnx.load(out_model))
                out_model.unlink()


def test_seed_model_is_fine(tmp_path):
    path = tmp_path / "seed.onnx"
    path.write_bytes(SEED_MODEL)
    assert cli(["run", path])[0] == 0
