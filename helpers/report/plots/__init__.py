"""Plot helpers: one module per topic, each function takes explicit arguments and RETURNS a
matplotlib Figure (no plt.show()). Saving is one call: `save_figure(fig, name, out_dir)`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib
import numpy as np

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
    matplotlib.use("Agg", force=False)  # headless unless a notebook chose inline

from helpers.paths import figures_dir  # noqa: E402

RASTERIZE_ABOVE = 2000  # points; larger scatter/line collections are embedded as images in SVGs


def _rasterize_large_collections(fig) -> None:
    """Keep axes, text and small artists vector, but embed big point clouds as pixels: an SVG
    with 30k vector markers is megabytes and slow to open, and nobody zooms into a single dot."""
    for ax in fig.axes:
        for artist in [*ax.collections, *ax.lines]:
            n = (
                len(artist.get_offsets())
                if hasattr(artist, "get_offsets")
                else len(artist.get_xdata())
                if hasattr(artist, "get_xdata")
                else 0
            )
            if n > RASTERIZE_ABOVE:
                artist.set_rasterized(True)


OUTLIER_SPAN_RATIO = 10.0  # an axis may span at most this many times its central 98% of points
MIN_POINTS_CHECKED = 20  # fewer points: every point matters, nothing is an outlier


class UnreadableFigureWarning(UserWarning):
    """A linear axis whose range is set by a handful of outlying points."""


def _plotted_points(ax):
    """All (x, y) data points of scatters and lines drawn in data coordinates -> [n, 2]."""
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D

    pts = []
    for art in ax.get_children():
        if not art.get_visible():
            continue
        if isinstance(art, PathCollection) and art.get_offset_transform() == ax.transData:
            xy = np.asarray(art.get_offsets(), dtype=float).reshape(-1, 2)
        elif isinstance(art, Line2D) and art.get_transform() == ax.transData:  # not axhline
            x, y = art.get_xdata(orig=False), art.get_ydata(orig=False)
            try:
                xy = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
            except (TypeError, ValueError):
                continue  # dates, categories
        else:
            continue
        pts.append(xy)
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def outlier_scaled_axes(fig, ratio: float = OUTLIER_SPAN_RATIO, q: float = 0.01) -> list[str]:
    """Axes whose visible range is set by a few points: for each visible axes and each LINEAR
    axis (x, y), the view range must not exceed `ratio` x the range of the central 98% of the
    plotted points (quantiles q, 1 - q). With 1% cut at each end, at most a handful of points
    (e.g. 5 of 512 positions) can stretch an axis before it is flagged. Log axes are exempt
    (they exist to show orders of magnitude); axes with < MIN_POINTS_CHECKED points too.
    Returns one line per problem, naming the panel, the axis and the fix."""
    problems = []
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        xy = _plotted_points(ax)
        xy = xy[np.isfinite(xy).all(1)]
        if len(xy) < MIN_POINTS_CHECKED:
            continue
        for dim, name in enumerate("xy"):
            if (ax.get_xscale() if dim == 0 else ax.get_yscale()) != "linear":
                continue
            lo, hi = ax.get_xlim() if dim == 0 else ax.get_ylim()
            c_lo, c_hi = np.quantile(xy[:, dim], [q, 1 - q])
            central = c_hi - c_lo
            span = abs(hi - lo)
            if central > 0 and span > ratio * central:
                title = ax.get_title() or f"axes {i}"
                problems.append(
                    f"{title!r}: {name} range {span:.3g} is {span / central:.0f}x the "
                    f"range of its central 98% of points ({central:.3g}); use a log "
                    f"axis or clip the outliers (helpers.report.plots.clip_outliers)"
                )
    return problems


def clip_outliers(ax, x, y, c=None, ratio: float = 1.15, q: float = 0.01, **scatter_kw):
    """Scatter (x, y) with axis limits set by the central points; points beyond them are drawn
    as open triangles pinned to the border and labelled with their true (x, y). Returns
    (main PathCollection, boolean mask of the clipped points). Use when a few points (e.g. an
    attention-sink position) are 10-300x the rest and would squash everything into a corner."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    c = None if c is None else np.asarray(c)
    lims = []
    for v in (x, y):
        ok = v[np.isfinite(v)]
        lo, hi = np.quantile(ok, [q, 1 - q]) if ok.size else (0.0, 0.0)
        if not hi - lo > 1e-6 * max(abs(float(np.median(ok))) if ok.size else 0.0, 1e-30):
            lims.append((-np.inf, np.inf))  # (near-)constant bulk: nothing to call an outlier
            continue
        # a point is an outlier when it lies further than the central range beyond it
        lims.append((lo - (hi - lo), hi + (hi - lo)))
    out = (x < lims[0][0]) | (x > lims[0][1]) | (y < lims[1][0]) | (y > lims[1][1])
    keep = ~out
    sc = ax.scatter(x[keep], y[keep], c=None if c is None else c[keep], **scatter_kw)
    if out.any() and keep.any():
        for v, lim, setter in ((x, lims[0], ax.set_xlim), (y, lims[1], ax.set_ylim)):
            k = v[keep & np.isfinite(v)]
            if np.isfinite(lim[0]) and k.size and k.max() > k.min():
                pad = 0.05 * (k.max() - k.min())
                setter(k.min() - pad, k.max() + 3 * pad)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for k, i in enumerate(np.flatnonzero(out)):
        px, py = float(np.clip(x[i], x0, x1)), float(np.clip(y[i], y0, y1))
        ax.plot(
            [px],
            [py],
            marker="^" if y[i] > y1 else "v" if y[i] < y0 else ">" if x[i] > x1 else "<",
            mfc="none",
            mec="crimson",
            ms=7,
            clip_on=False,
        )
        ax.annotate(
            f"({x[i]:.3g}, {y[i]:.3g})",
            (px, py),
            fontsize=6,
            color="crimson",
            xytext=(-4, -8 - 8 * k),
            textcoords="offset points",
            ha="right",
            annotation_clip=False,
        )
    return sc, out


def save_figure(
    fig,
    name: str,
    out_dir: Path | str | None = None,
    formats: tuple[str, ...] = ("png", "svg"),
    dpi: int = 120,
) -> list[Path]:
    """Save `fig` as <out_dir>/<name>.png and .svg (out_dir defaults to figures/); return paths.
    Point clouds of more than RASTERIZE_ABOVE points are rasterised inside the SVG. Warns
    (raises if SAE_LAB_STRICT_FIGURES=1) when outliers set an axis (`outlier_scaled_axes`)."""
    out = Path(out_dir) if out_dir is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    _rasterize_large_collections(fig)
    problems = outlier_scaled_axes(fig)
    if problems:
        msg = f"figure {name}: " + "; ".join(problems)
        if os.environ.get("SAE_LAB_STRICT_FIGURES") == "1":  # set by the notebook tests
            raise ValueError(msg)
        warnings.warn(msg, UnreadableFigureWarning, stacklevel=2)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths
