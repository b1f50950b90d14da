"""Moved: shape inference is `tvmlite.export.shapes` (above the IR, which never imports it).

This name stays importable for code written against it; it warns and hands back the new module
itself, so there is one copy of every function. Nothing in tvmlite imports it: tvmlite/layers.py
puts it in the top "compat" layer, so an import of it from inside the package fails
tests/test_layers.py.
"""
import sys
import warnings

from tvmlite.export import shapes as _shapes

warnings.warn("tvmlite.ir.shapes is deprecated: import tvmlite.export.shapes", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _shapes
