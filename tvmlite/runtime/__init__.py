"""The runtime layer's onnxruntime side: sessions and timing (tvmlite.runtime.ort).

The NumPy plan (tvmlite.backends.numpy) sits in the same layer; both only run graphs, never rewrite
them, so passes and the driver above may use either.
"""
