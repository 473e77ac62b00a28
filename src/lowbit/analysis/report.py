"""The analysis report: one self-contained HTML file (inline SVG plots, inline CSS, no scripts)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from lowbit.analysis.svg import channel_ranges, histogram, horizontal_bars, pareto_plot
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
    rows = [[l.name, l.op_type, l.only, l.all_but, l.weight_only, l.activation_only, l.output_mse, len(l.quantizers)]
            for l in layers]
    extra = "".join(f"<li>{escape(k)}: {_cell(v)}</li>" for k, v in result.extra.items() if v is not None)
    body = (f"<ul><li>metric: {escape(result.metric)} (higher is better)</li>"
            f"<li>float model: {_cell(result.float_score)}</li>"
            f"<li>quantized model: {_cell(result.quantized_score)}</li>"
            f"{extra}<li>{len(layers)} layers, {result.seconds:.1f} s</li></ul>"
            f"<h2>Sensitivity</h2><figure>{bars}</figure><figure>{split}</figure>"
            f"<h2>Weight ranges per output channel ({len(ranges)} most sensitive layers with weights)</h2>"
            f"<div class=\"plots\">{''.join(f'<figure>{r}</figure>' for r in ranges)}</div>"
            f"<h2>Activation histograms and clipping ranges ({len(hists)} most sensitive layers)</h2>"
            f"<div class=\"plots\">{''.join(f'<figure>{h}</figure>' for h in hists)}</div>"
            f"<h2>All layers</h2>" + _table(header, rows))
    return atomic_write_text(out_dir / "analysis.html", _page("lowbit analysis", body))


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>")


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_mixed_precision_report(result, out_dir: Path) -> Path:
    """Write ``out_dir/mixed_precision.html`` for a MixedPrecisionResult; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    full = max(p.cost for p in result.evaluated)
    relative = lambda p: (100 * p.cost / full, p.score)
    plot = pareto_plot([relative(p) for p in result.evaluated], [relative(p) for p in result.pareto],
                       relative(result.chosen) if result.chosen else None, result.target,
                       "BOPs, % of the most precise configuration", result.metric,
                       "Accuracy vs cost (grey: scored; blue: Pareto front; red: chosen; dashed: target)")
    chosen = result.chosen.bitwidths if result.chosen else {}
    layers = [[name, f"W{bits[0]}A{bits[1]}", *[scores.get(c) for c in sorted(scores, key=lambda b: -b[0] * b[1])]]
              for name, scores in result.phase1.items() for bits in [chosen.get(name, ("", ""))]]
    steps = [[f"{relative(p)[0]:.1f}%", p.weight_bytes / 1024, p.mean_weight_bits, p.score] for p in result.evaluated]
    summary = (f"<ul><li>metric: {escape(result.metric)} (higher is better); float {_cell(result.float_score)}; "
               f"target {_cell(result.target)}</li><li>{escape(str(result))}</li></ul>")
    body = (summary + f"<figure>{plot}</figure><h2>Chosen bitwidths and phase-1 scores (this layer at each "
            f"candidate, the others most precise)</h2>"
            + _table(["layer", "chosen", "candidates, most precise first"], layers)
            + "<h2>Phase 2: configurations in the order scored</h2>"
            + _table(["BOPs", "weight KiB", "mean weight bits", "score"], steps))
    return atomic_write_text(out_dir / "mixed_precision.html", _page("lowbit mixed precision", body))


def write_autoquant_report(result, out_dir: Path) -> Path:
    """Write ``out_dir/autoquant.html`` for an AutoQuantResult; returns its path."""
    names = [stage.name for stage in result.stages]
    bars = horizontal_bars(names, {"score": [stage.score for stage in result.stages],
                                   "target": [result.target for _ in result.stages]},
                           "Score after each stage", "score (higher is better)")
    rows = [[s.name, s.score, "yes" if s.score >= result.target else "no", s.seconds,
             "cache" if s.cached else "run", s.detail] for s in result.stages]
    files = "".join(f"<li>{escape(str(path))}</li>" for path in (result.export_paths or ()))
    body = (f"<ul><li>{escape(str(result))}</li><li>float score {_cell(result.float_score)}, target "
            f"{_cell(result.target)}</li></ul><figure>{bars}</figure><h2>Stages</h2>"
            + _table(["stage", "score", "meets target", "seconds", "from", "what it chose"], rows)
            + f"<h2>Exported files</h2><ul>{files}</ul>")
    return atomic_write_text(out_dir / "autoquant.html", _page("lowbit AutoQuant", body))
