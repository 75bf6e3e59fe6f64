"""Plot helpers: one module per topic, each function takes explicit arguments and RETURNS a
matplotlib Figure (no plt.show()). Saving is one call: `save_figure(fig, name, out_dir)`."""
from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
    matplotlib.use("Agg", force=False)  # headless unless a notebook chose inline

from ..paths import figures_dir  # noqa: E402


RASTERIZE_ABOVE = 2000  # points; larger scatter/line collections are embedded as images in SVGs


def _rasterize_large_collections(fig) -> None:
    """Keep axes, text and small artists vector, but embed big point clouds as pixels: an SVG
    with 30k vector markers is megabytes and slow to open, and nobody zooms into a single dot."""
    for ax in fig.axes:
        for artist in [*ax.collections, *ax.lines]:
            n = len(artist.get_offsets()) if hasattr(artist, "get_offsets") else \
                len(artist.get_xdata()) if hasattr(artist, "get_xdata") else 0
            if n > RASTERIZE_ABOVE:
                artist.set_rasterized(True)


def save_figure(fig, name: str, out_dir: Path | str | None = None,
                formats: tuple[str, ...] = ("png", "svg"), dpi: int = 120) -> list[Path]:
    """Save `fig` as <out_dir>/<name>.png and .svg (out_dir defaults to figures/); return paths.
    Point clouds of more than RASTERIZE_ABOVE points are rasterised inside the SVG."""
    out = Path(out_dir) if out_dir is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    _rasterize_large_collections(fig)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths
