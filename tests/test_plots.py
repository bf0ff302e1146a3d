"""The figures: every one is written, with Brian2's recorded potentials on the closed-form ones."""
from ttfs_brian.plots import lenet_figures


def test_lenet_figures_with_brian_traces(tmp_path):
    paths = lenet_figures(tmp_path, sample=1, brian=True, n=20)
    assert [p.name for p in paths] == ["raster_lenet5.png", "traces_lenet5.png", "scatter_lenet5.png",
                                       "histogram_lenet5.png"]
    assert all(p.exists() and p.stat().st_size > 10_000 for p in paths)
