"""tvmlite's rewrite passes: one module per pass family, all registered by name for the CLI."""
from passes.base import (PASSES, Pass, PassResult, Pipeline, available_passes,  # noqa: F401
                         parse_spec, register_pass)
from passes import cleanup  # noqa: F401,E402  (registers the clean-up passes)
from passes import constants, shape_fold, redundant, fusions, cse, simplify  # noqa: F401,E402  (more clean-ups)
from passes import lowering  # noqa: F401,E402  (lower-conv: im2col / MEC)
from passes import winograd  # noqa: F401,E402  (winograd)
from passes import conv_choice  # noqa: F401,E402  (choose-conv)
from passes import quantize  # noqa: F401,E402  (registers quantize, quantize-dynamic)
from passes import fp16  # noqa: F401,E402  (registers fp16)
from passes import lowrank  # noqa: F401,E402  (low-rank factorization)
from passes import prune  # noqa: F401,E402  (pruning)
from passes import sparsify  # noqa: F401,E402  (sparse-op selection)
from passes import compress_weights  # noqa: F401,E402  (binary/ternary/k-means weights)
