"""Where a quantized model loses accuracy: per-layer sensitivity, ranges and histograms, an HTML report."""

from lowbit.analysis.autoquant import AutoQuantResult, Stage, autoquant
from lowbit.analysis.mixed_precision import MixedPrecisionResult, ParetoPoint, mixed_precision
from lowbit.analysis.sensitivity import AnalysisResult, LayerSensitivity, analyze

__all__ = ["autoquant", "AutoQuantResult", "Stage", "analyze", "AnalysisResult", "LayerSensitivity", "mixed_precision", "MixedPrecisionResult", "ParetoPoint"]
