"""tvmlite's rewrite passes: one module per pass family, all registered by name for the CLI."""
# This folder is installed as ``tvmlite.passes`` (tvmlite/passes links here; pyproject maps it), so
# no global ``passes`` module lands in users' environments. A source checkout still puts this folder
# on sys.path as ``passes``: importing it that way warns and hands back the ``tvmlite.passes``
# modules themselves, so classes are never loaded twice (isinstance and the registry stay one).
if __name__ == "passes":  # pragma: no cover - exercised by tests/test_layers.py in a subprocess
    import importlib as _importlib
    import importlib.abc as _abc
    import importlib.util as _util
    import sys as _sys
    import warnings as _warnings

    _warnings.warn("`import passes` is deprecated: import tvmlite.passes", DeprecationWarning, stacklevel=2)
    _real = _importlib.import_module("tvmlite.passes")

    class _Alias(_abc.MetaPathFinder, _abc.Loader):
        """passes.X -> the already imported (or imported now) tvmlite.passes.X module."""

        def find_spec(self, fullname, path=None, target=None):
            if not fullname.startswith("passes."):
                return None
            return _util.spec_from_loader(fullname, self)

        def create_module(self, spec):
            module = _importlib.import_module("tvmlite." + spec.name)
            self.real_spec = module.__spec__  # importlib overwrites __spec__ with the alias's
            return module

        def exec_module(self, module):
            module.__spec__ = self.real_spec

    _sys.meta_path.insert(0, _Alias())
    for _name, _mod in list(_sys.modules.items()):
        if _name.startswith("tvmlite.passes."):
            _sys.modules[_name[len("tvmlite."):]] = _mod
    _sys.modules[__name__] = _real
else:
    from tvmlite.passes.base import (PASSES, Pass, PassResult, Pipeline, available_passes,  # noqa: F401
                             parse_spec, register_pass)
    from tvmlite.passes import cleanup  # noqa: F401,E402  (registers the clean-up passes)
    from tvmlite.passes import constants, shape_fold, redundant, fusions, cse, simplify  # noqa: F401,E402  (more clean-ups)
    from tvmlite.passes import activation_fusion, conv_input_affine, affine_as_conv  # noqa: F401,E402  (fuse-hardswish, fuse-affine-conv, affine-as-conv)
    from tvmlite.passes import residual_scale, subpixel_convtranspose  # noqa: F401,E402  (fuse-residual-scale, subpixel-convtranspose)
    from tvmlite.passes import upsample_conv  # noqa: F401,E402  (upsample-conv)
    from tvmlite.passes import lowering  # noqa: F401,E402  (lower-conv: im2col / MEC)
    from tvmlite.passes import winograd  # noqa: F401,E402  (winograd)
    from tvmlite.passes import conv_choice  # noqa: F401,E402  (choose-conv)
    from tvmlite.passes import quantize  # noqa: F401,E402  (registers quantize)
    from tvmlite.passes import quantize_dynamic  # noqa: F401,E402  (registers quantize-dynamic)
    from tvmlite.passes import fp16  # noqa: F401,E402  (registers fp16)
    from tvmlite.passes import lowrank  # noqa: F401,E402  (low-rank factorization)
    from tvmlite.passes import prune  # noqa: F401,E402  (pruning)
    from tvmlite.passes import sparsify  # noqa: F401,E402  (sparse-op selection)
    from tvmlite.passes import compress_weights  # noqa: F401,E402  (binary/ternary/k-means weights)
    from tvmlite.passes import quantize_weights  # noqa: F401,E402  (block-wise int4/int8 weights)
    from tvmlite.passes import transformer_fusion  # noqa: F401,E402  (fuse-transformer: com.microsoft Attention...)
