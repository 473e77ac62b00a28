"""The analysis report: one self-contained HTML file (inline SVG plots, inline CSS, no scripts)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from lowbit.analysis.svg import channel_ranges, histogram, horizontal_bars
from lowbit.atomic import atomic_write_text

PLOTTED_LAYERS = 12
"""Layers (most sensitive first) whose weight ranges and activation histograms are drawn."""

STYLE = ("body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:12px}"
         "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
         ".plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}")


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else escape(str(value))


def write_analysis_report(result, out_dir: Path) -> Path:
    """Write ``out_dir/analysis.html`` for an AnalysisResult; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = result.layers
    names = [layer.name for layer in layers]
    bars = horizontal_bars(names, {"only this layer quantized": [l.only for l in layers],
                                   "all but this layer quantized": [l.all_but for l in layers]},
                           "Per-layer sensitivity (most sensitive first)", result.metric)
    split = horizontal_bars(names, {"weights only": [l.weight_only for l in layers],
                                    "activations only": [l.activation_only for l in layers]},
                            "Weight vs activation sensitivity", result.metric)
    plotted = layers[:PLOTTED_LAYERS]
    ranges = [channel_ranges(*l.weight_ranges, f"{l.name} weights") for l in plotted if l.weight_ranges]
    hists = [histogram(l.activation.counts, l.activation.edges, l.activation.clip, f"{l.name} output")
             for l in plotted if l.activation is not None]
    header = ["layer", "op", "only", "all but", "weights only", "activations only", "output MSE", "quantizers"]
    rows = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in (
        l.name, l.op_type, l.only, l.all_but, l.weight_only, l.activation_only, l.output_mse,
        len(l.quantizers))) + "</tr>" for l in layers)
    extra = "".join(f"<li>{escape(k)}: {_cell(v)}</li>" for k, v in result.extra.items() if v is not None)
    html = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lowbit analysis</title>"
            f"<style>{STYLE}</style></head><body><h1>lowbit analysis</h1>"
            f"<ul><li>metric: {escape(result.metric)} (higher is better)</li>"
            f"<li>float model: {_cell(result.float_score)}</li><li>quantized model: {_cell(result.quantized_score)}</li>"
            f"{extra}<li>{len(layers)} layers, {result.seconds:.1f} s</li></ul>"
            f"<h2>Sensitivity</h2><figure>{bars}</figure><figure>{split}</figure>"
            f"<h2>Weight ranges per output channel ({len(ranges)} most sensitive layers with weights)</h2>"
            f"<div class=\"plots\">{''.join(f'<figure>{r}</figure>' for r in ranges)}</div>"
            f"<h2>Activation histograms and clipping ranges ({len(hists)} most sensitive layers)</h2>"
            f"<div class=\"plots\">{''.join(f'<figure>{h}</figure>' for h in hists)}</div>"
            f"<h2>All layers</h2><table><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>{rows}</table>"
            f"</body></html>")
    return atomic_write_text(out_dir / "analysis.html", html)
