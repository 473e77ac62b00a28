"""Where a quantized model loses accuracy: per-layer sensitivity, ranges and histograms, an HTML report."""

from lowbit.analysis.mixed_precision import MixedPrecisionResult, ParetoPoint, mixed_precision
from lowbit.analysis.sensitivity import AnalysisResult, LayerSensitivity, analyze

__all__ = ["analyze", "AnalysisResult", "LayerSensitivity", "mixed_precision", "MixedPrecisionResult", "ParetoPoint"]
