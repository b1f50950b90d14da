"""ONNX node conformance cases through the NumPy backend, for every op the backend claims.

A case is claimed when every op in its model (subgraphs included) has a registered kernel for the
case's opset. Claimed cases must pass, except those listed with a reason in
conformance_known_failures.txt; the pass rate over claimed cases must be >= 99%, and a listed case
that starts passing must be taken off the list.
"""
from __future__ import annotations

import functools
import pathlib
import warnings

import numpy as np
import pytest

from tvmlite.backends.numpy import compile_model, missing_kernels
from tvmlite.frontend import import_model

KNOWN_FAILURES_FILE = pathlib.Path(__file__).with_name("conformance_known_failures.txt")


def known_failures() -> dict[str, str]:
    out = {}
    for line in KNOWN_FAILURES_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition(":")
            out[name.strip()] = reason.strip()
    return out


@functools.lru_cache(maxsize=1)
def all_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases()}


def claimed(case) -> tuple[bool, str]:
    try:
        model = import_model(case.model, check=False)
    except Exception as e:  # noqa: BLE001 - a case tvmlite cannot even import is not claimed
        return False, f"import: {e}"
    problems = missing_kernels(model.graph, model.opsets)
    return (not problems), "; ".join(problems)


@functools.lru_cache(maxsize=1)
def claimed_cases() -> list[str]:
    return sorted(name for name, c in all_cases().items() if claimed(c)[0])


def _compare(expected, actual, rtol, atol, where):
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: sequence mismatch"
        for i, (e, a) in enumerate(zip(expected, actual)):
            _compare(e, a, rtol, atol, f"{where}[{i}]")
        return
    if expected is None:
        assert actual is None, f"{where}: expected an empty optional"
        return
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray), f"{where}: got {type(actual).__name__}, not an array"
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    if expected.dtype == object or expected.dtype.kind in "biuUSO":
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    else:
        np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                                   rtol=rtol, atol=atol, err_msg=where)


def _to_numpy(x):
    """Test data comes as arrays, lists (sequences) or TensorProtos (exotic dtypes such as float8)."""
    from onnx import TensorProto, numpy_helper

    if isinstance(x, TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, list):
        return [_to_numpy(v) for v in x]
    return x


def run_case(case) -> None:
    model = import_model(case.model, check=False)
    plan = compile_model(model)
    names = [i.name for i in case.model.graph.input]
    for inputs, outputs in case.data_sets:
        inputs, outputs = _to_numpy(list(inputs)), _to_numpy(list(outputs))
        feeds = dict(zip(names, inputs))
        with np.errstate(all="ignore"):
            got = plan.run(feeds)
        for i, (e, a) in enumerate(zip(outputs, got)):
            _compare(e, a, case.rtol, case.atol, f"{case.name} output {i}")


def case_passes(case) -> tuple[bool, str]:
    try:
        run_case(case)
        return True, ""
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@pytest.mark.parametrize("name", claimed_cases())
def test_case(name):
    case = all_cases()[name]
    known = known_failures()
    ok, why = case_passes(case)
    if name in known:
        if ok:
            pytest.fail(f"{name} passes now: remove it from {KNOWN_FAILURES_FILE.name}")
        pytest.xfail(known[name])
    assert ok, why


def test_pass_rate_and_known_failures_list():
    names = claimed_cases()
    assert len(names) > 1000, f"only {len(names)} conformance cases claimed"
    known = known_failures()
    stale = sorted(set(known) - set(names))
    assert not stale, f"known failures that are not claimed cases: {stale[:5]}"
    rate = 1 - len(known) / len(names)
    assert rate >= 0.99, f"pass rate {rate:.2%} over {len(names)} claimed cases is below 99%"
