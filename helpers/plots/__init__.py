"""Plot helpers: one module per topic, each function takes explicit arguments and RETURNS a
matplotlib Figure (no plt.show()). Saving is one call: `save_figure(fig, name, out_dir)`."""
from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
    matplotlib.use("Agg", force=False)  # headless unless a notebook chose inline

from ..paths import figures_dir  # noqa: E402


def save_figure(fig, name: str, out_dir: Path | str | None = None,
                formats: tuple[str, ...] = ("png", "svg"), dpi: int = 120) -> list[Path]:
    """Save `fig` as <out_dir>/<name>.png and .svg (out_dir defaults to figures/); return paths."""
    out = Path(out_dir) if out_dir is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths
