"""The compression report: one self-contained HTML file with each layer's loss curve over its candidate ratios,
the ratio chosen and the equal-loss level the selection stopped at."""

from __future__ import annotations

from html import escape
from pathlib import Path

from lowbit.analysis.report import _page, _table
from lowbit.analysis.svg import pareto_plot
from lowbit.atomic import atomic_write_text


def write_compression_report(result, out_dir: Path) -> Path:
    """Write ``out_dir/compression.html`` for a CompressionResult; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = {name: next(c for c in result.curves[name] if (c.method, c.kept, c.full) == choice)
              for name, choice in result.ratios.items()}
    level = max((c.loss for c in chosen.values()), default=0.0)
    plots = []
    for name, candidates in result.curves.items():
        points = sorted((c.macs_saved / result.macs[0], c.loss) for c in candidates)
        mark = (chosen[name].macs_saved / result.macs[0], chosen[name].loss) if name in chosen else None
        methods = ", ".join(sorted({c.method for c in candidates}))
        plots.append(pareto_plot(points, points, mark, level, "fraction of the model's MACs saved",
                                 "loss against the original", f"{name} ({methods})"))
    (m0, m1), (p0, p1) = result.macs, result.params
    rows = [[name, method, kept, full, f"{kept / full:.0%}"] for name, (method, kept, full) in result.ratios.items()]
    skipped = "".join(f"<li>{escape(name)}: {escape(reason)}</li>" for name, reason in result.skipped.items())
    body = (f"<ul><li>MACs {m0:,} → {m1:,} ({m1 / m0:.1%})</li><li>parameters {p0:,} → {p1:,}</li>"
            f"<li>score {result.score[0]:.4g} before fine-tuning, {result.score[1]:.4g} after</li>"
            f"<li>equal-loss level of the selection: {level:.4g} (dashed)</li><li>{result.seconds:.0f} s</li></ul>"
            "<h2>Chosen ratios</h2>" + _table(["layer", "method", "kept", "of", "fraction"], rows)
            + "<h2>Per-layer curves</h2><div class=\"plots\">"
            + "".join(f"<figure>{plot}</figure>" for plot in plots) + "</div>"
            + f"<h2>Layers left as they were</h2><ul>{skipped}</ul>")
    return atomic_write_text(out_dir / "compression.html", _page("lowbit compression", body))
