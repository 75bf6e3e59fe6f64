"""save_figure writes PNG + SVG and keeps SVGs of big scatters small."""
import matplotlib.pyplot as plt
import numpy as np

from helpers.plots import save_figure


def test_save_figure__writes_both_formats_and_rasterizes_big_point_clouds(tmp_path):
    rng = np.random.default_rng(0)
    fig, (a, b) = plt.subplots(1, 2)
    big = a.scatter(*rng.normal(size=(2, 20_000)), s=1)
    small = b.scatter(*rng.normal(size=(2, 50)), s=1)
    paths = save_figure(fig, "cloud", tmp_path)
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in paths)
    assert big.get_rasterized() and not small.get_rasterized()
    # 20k vector markers would take ~2 MB; rasterised, the SVG stays small
    assert paths[1].stat().st_size < 500_000
    plt.close(fig)
