"""Quantization: calibration statistics, scale/zero-point formulas, QDQ insertion, per-layer choice."""
