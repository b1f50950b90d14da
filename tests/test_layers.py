"""The layering stays: no module imports a layer above its own, no folders import each other in a
circle (imports inside functions included; see tvmlite/layers.py), and `passes` is
tvmlite.passes."""
import pathlib
import shutil
import subprocess
import sys

import pytest

from tvmlite import layers

# Violations tolerated (none: the last were removed in issue 13). The test fails on any upward
# import or cycle not listed here, and on a listed one that is gone, so a list may only shrink.
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[list[str]] = []


def test_no_upward_imports():
    up = {(a, b) for a, b, _, _ in layers.upward()}
    new = sorted(up - KNOWN_UPWARD)
    assert not new, "upward imports:\n" + "\n".join(
        f"  {a} ({layers.layer_of(a)}) -> {b} ({layers.layer_of(b)})" for a, b in new)
    gone = sorted(KNOWN_UPWARD - up)
    assert not gone, f"fixed, remove from KNOWN_UPWARD: {gone}"


def test_no_folder_cycles():
    cycles = layers.folder_cycles()
    assert sorted(cycles) == sorted(KNOWN_CYCLES), f"folder cycles: {cycles}"


def test_walk_sees_lazy_imports_and_upward_ones():
    # the walker must be able to fail: a synthetic edge from the IR to the driver is upward
    edges = [("tvmlite.ir.graph", "tvmlite.optimize", 1, True), ("tvmlite.cli", "tvmlite.ir", 1, False)]
    assert layers.upward(edges) == [edges[0]]
    assert layers.folder_cycles([("tvmlite.ops.conv", "tvmlite.ir.graph", 1, False),
                                 ("tvmlite.ir.graph", "tvmlite.ops.control", 2, True)]) == [["tvmlite.ir", "tvmlite.ops"]]
    assert any(lazy for *_, lazy in layers.imports())


def test_every_module_has_a_layer_and_passes_are_inside_tvmlite():
    mods = layers._MODULES
    assert "tvmlite.passes.base" in mods and not any(m.startswith("passes") for m in mods)
    assert layers.layer_of("tvmlite.passes.lowrank") == "passes"
    assert layers.layer_of("tvmlite.backends.tvm.lower") == "tvm"
    assert layers.layer_of("tvmlite.backends.numpy.plan") == "runtime"


def test_old_passes_import_warns_and_shares_modules():
    code = ("import warnings, sys; warnings.simplefilter('error', DeprecationWarning)\n"
            "import tvmlite.passes.cleanup as c\n"
            "try:\n    import passes\nexcept DeprecationWarning as e:\n    print('warned', e)\n"
            "warnings.simplefilter('ignore')\n"
            "import passes\nfrom passes.cleanup import FoldBatchNorm\nfrom passes import Pipeline\n"
            "import tvmlite.passes as t\n"
            "print(FoldBatchNorm is c.FoldBatchNorm, passes is t, Pipeline is t.Pipeline)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "warned" in out and "tvmlite.passes" in out
    assert out.strip().endswith("True True True")


def test_moved_modules_sit_in_their_layers():
    assert layers.layer_of("tvmlite.outputs") == "errors"  # the exporter and the TVM writer use it
    assert layers.layer_of("tvmlite.export.shapes") == "onnx-io"
    assert layers.layer_of("tvmlite.ops.batchnorm_fold") == "ops"
    assert layers.layer_of("tvmlite.passes.counts") == "passes"
    assert "tvmlite.ir.shapes" not in layers._MODULES  # the IR holds no shape inference


def test_every_tvmlite_import_names_a_module_that_exists(monkeypatch):
    missing = layers.unresolved()
    assert not missing, "imports of modules that do not exist (moved? update the import):\n" + "\n".join(
        f"  {a} -> {b} line {ln}" for a, b, ln in missing)
    # and the check can fail: without export/shapes.py its importers are reported, not counted as
    # imports of tvmlite.export
    monkeypatch.delitem(layers._MODULES, "tvmlite.export.shapes")
    layers._walk.cache_clear()
    try:
        assert ("tvmlite.passes.counts", "tvmlite.export.shapes") in {(a, b) for a, b, _ in layers.unresolved()}
    finally:
        monkeypatch.undo()
        layers._walk.cache_clear()


def test_numpy_backend_folds_batchnorm_without_loading_a_pass():
    # the walker reads the source; this checks what a process really loads: the NumPy backend
    # folds digits_cnn's BatchNormalizations with no pass module imported
    code = ("import sys, numpy as np\n"
            "import tvmlite\nfrom tvmlite.backends.numpy import compile_model\n"
            "from tvmlite.ops.batchnorm_fold import fold_batchnorms\n"
            "m = tvmlite.load('models/digits_cnn.onnx')\n"
            "print([why for _, why in fold_batchnorms(m.copy())])\n"
            "d = np.load('models/digits_test.npz')\n"
            "feed = {m.graph.inputs[0]: d[d.files[0]][:8].astype(np.float32)}\n"
            "folded, plain = (compile_model(m, fold_bn=f).run(feed)[0] for f in (True, False))\n"
            "print(float(np.abs(folded - plain).max() / np.abs(plain).max()))\n"
            "print(any(k.startswith('tvmlite.passes') for k in sys.modules))\n")
    root = pathlib.Path(__file__).resolve().parents[1]
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=root).stdout.split("\n")
    assert lines[0] == "[None, None, None, None]"  # its four BatchNormalizations, all folded
    assert float(lines[1]) < 1e-5
    assert lines[2] == "False"


def test_package_build_ships_passes_inside_tvmlite_only(tmp_path):
    # what a wheel holds is what setuptools' build_py lays out (bdist_wheel runs it, then adds the
    # metadata); build_py needs neither the network nor the `wheel` package, so it runs anywhere.
    # Built from a copy: a build in the checkout leaves build/ and egg-info behind.
    pytest.importorskip("setuptools")
    root = pathlib.Path(__file__).resolve().parents[1]
    src, lib = tmp_path / "src", tmp_path / "lib"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    for name in ("tvmlite", "passes"):
        shutil.copytree(root / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                    "--build-lib", str(lib)], cwd=src, check=True, capture_output=True, timeout=120)
    assert sorted(p.name for p in lib.iterdir()) == ["tvmlite"]
    passes = lib / "tvmlite" / "passes"
    assert passes.is_dir() and not passes.is_symlink()  # the files themselves, not a dangling link
    assert {"__init__.py", "base.py", "cleanup.py", "counts.py"} <= {p.name for p in passes.iterdir()}
