"""Small matplotlib (Agg) chart helpers that return PNG bytes, for the run report.

    python -m lion.report RUN_DIR        # the only user of these helpers

Each helper draws one chart from plain lists and returns the PNG as bytes, or None when there is nothing
to draw (so the report can say "no data" instead of embedding an empty frame). matplotlib is imported
lazily with the Agg backend, so importing this module never needs a display.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

Number = float | int | None

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        from .errors import LionError

        raise LionError("the report's charts need matplotlib: pip install 'lion[report]'") from None

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _color(i: int, n: int) -> Any:
    """Distinct colours: a fixed palette up to 10 series, matplotlib's tab20 beyond."""
    if n <= len(_COLORS):
        return _COLORS[i % len(_COLORS)]
    return _plt().get_cmap("tab20")(i % 20)


def _finish(fig: Any, ax: Any, title: str, xlabel: str, ylabel: str, legend: bool, outside: bool = False) -> bytes:
    ax.set_title(title, fontsize=11)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend and outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif legend:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def _has_values(series: Mapping[str, Sequence[Number]]) -> bool:
    return any(v is not None for vals in series.values() for v in vals)


def line_chart(
    title: str,
    x: Sequence[Any],
    series: Mapping[str, Sequence[Number]],
    *,
    xlabel: str = "round",
    ylabel: str = "",
    percent: bool = False,
    ylim: tuple[float, float] | None = None,
    ymin: float | None = None,
    emphasise: Sequence[str] = (),
    intervals: Mapping[str, Sequence[tuple[float, float] | None]] | None = None,
    hline: float | None = None,
) -> bytes | None:
    """One line per series over `x` (None values leave gaps); markers so a single round still shows.
    Series named in `emphasise` are drawn thick, black and dashed (e.g. "overall"); `intervals` gives a series
    (low, high) error bars per point (a confidence interval); `hline` draws a thin horizontal reference line."""
    if not x or not _has_values(series):
        return None
    plt = _plt()
    many = len(series) > 5
    fig, ax = plt.subplots(figsize=(7.6 if many else 6.4, 3.4))
    scale = 100.0 if percent else 1.0
    if hline is not None:
        ax.axhline(hline * scale, color="#777", linewidth=0.8)
    for i, (name, vals) in enumerate(series.items()):
        ys = [float("nan") if v is None else float(v) * scale for v in vals]
        if name in emphasise:
            ax.plot(list(x), ys, marker="s", label=name, color="black", linewidth=2.4, linestyle="--")
        else:
            ax.plot(list(x), ys, marker="o", label=name, color=_color(i, len(series)))
        spans = (intervals or {}).get(name)
        if spans:
            pts = [(xi, y, s) for xi, y, s in zip(x, ys, spans) if s is not None and y == y]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], fmt="none", capsize=4, linewidth=1.2,
                            ecolor="black" if name in emphasise else _color(i, len(series)),
                            yerr=[[p[1] - p[2][0] * scale for p in pts], [p[2][1] * scale - p[1] for p in pts]])
    ax.set_xticks(list(x))
    if ylim:
        ax.set_ylim(*ylim)
    elif ymin is not None:
        ax.set_ylim(bottom=ymin)
    return _finish(
        fig, ax, title, xlabel, ylabel + (" (%)" if percent and ylabel else ""), len(series) > 1, outside=many
    )


def histogram(
    title: str,
    data: Mapping[str, Sequence[float]],
    *,
    xlabel: str = "",
    bins: int = 20,
    marker: float | None = None,
    marker_label: str = "",
) -> bytes | None:
    """Overlaid step histograms, one per series, on shared bins; an optional vertical marker line."""
    vals = [v for xs in data.values() for v in xs]
    if not vals:
        return None
    plt = _plt()
    lo, hi = min(vals), max(vals)
    if marker is not None:
        lo, hi = min(lo, marker), max(hi, marker)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for i, (name, xs) in enumerate(data.items()):
        if xs:
            ax.hist(
                list(xs),
                bins=bins,
                range=(lo, hi),
                histtype="step",
                linewidth=1.8,
                label=f"{name} (n={len(xs)})",
                color=_color(i, len(data)),
            )
    if marker is not None:
        ax.axvline(marker, color="black", linestyle="--", linewidth=1, label=marker_label or None)
    return _finish(fig, ax, title, xlabel, "count", True)


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Mapping[str, Sequence[Number]],
    *,
    stacked: bool = False,
    horizontal: bool = False,
    ylabel: str = "",
    log: bool = False,
    colors: Sequence[str] | None = None,
) -> bytes | None:
    """Grouped (or stacked) bars: one group per category, one bar per series (optional colour per series)."""
    if not categories or not _has_values(series):
        return None
    plt = _plt()
    n = len(series)
    height = max(3.0, 0.35 * len(categories) + 1.2) if horizontal else 3.6
    fig, ax = plt.subplots(figsize=(6.8, height))
    pos = list(range(len(categories)))
    width = 0.8 if stacked else 0.8 / max(n, 1)
    base = [0.0] * len(categories)
    for i, (name, vals) in enumerate(series.items()):
        ys = [0.0 if v is None else float(v) for v in vals]
        if stacked:
            at = pos
        else:
            at = [p - 0.4 + width * (i + 0.5) for p in pos]
        kw = {"label": name, "color": colors[i] if colors and i < len(colors) else _color(i, n)}
        if horizontal:
            ax.barh(at, ys, height=width, left=base if stacked else None, **kw)
        else:
            ax.bar(at, ys, width=width, bottom=base if stacked else None, **kw)
        if stacked:
            base = [b + y for b, y in zip(base, ys, strict=True)]
    if horizontal:
        ax.set_yticks(pos)
        ax.set_yticklabels(list(categories), fontsize=8)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
    else:
        ax.set_xticks(pos)
        ax.set_xticklabels(
            list(categories),
            fontsize=8,
            rotation=30 if max(map(len, categories)) > 8 else 0,
            ha="right" if max(map(len, categories)) > 8 else "center",
        )
        if log:
            ax.set_yscale("log")
    return _finish(fig, ax, title, ylabel if horizontal else "", "" if horizontal else ylabel, n > 1)
