"""What every committed result file must carry, checked on the files themselves.

- Every top-level figures/*_metrics.json records the versions it was made with (assignment D asks
  for the Python version).
- Every galaxy VAE's metrics file (figures/ and its tries) carries the galaxy Fréchet distance of
  its samples and its real-image floor in its final block.
- No committed plot of curves (loss, accuracy, comparison) is wider than 3.5x its height, so it
  stays readable at README width; image grids (samples, reconstructions, weights) are exempt.
"""
import json
import struct

from conftest import ROOT

FIGURES = ROOT / "figures"
CURVE_PLOTS = ("_loss", "_curves", "_accuracy", "_comparison", "_frechet")  # the names' endings
MAX_ASPECT = 3.5


def png_size(path):
    """(width, height) from a PNG's header: the IHDR chunk right after the 8-byte signature."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
    return struct.unpack(">II", header[16:24])


def aspect(path):
    width, height = png_size(path)
    return width / height


def test_every_top_level_metrics_file_records_its_versions():
    without = {path.name.removesuffix("_metrics.json") for path in FIGURES.glob("*_metrics.json")
               if "versions" not in json.loads(path.read_text(encoding="utf-8"))}
    assert without == set()


def test_every_galaxy_vae_metrics_file_carries_the_frechet_distance_and_its_floor():
    files = sorted(FIGURES.rglob("galaxy_vae_*_metrics.json"))
    without = {str(path.relative_to(FIGURES)) for path in files
               if not {"frechet_generated", "frechet_floor"} <= json.loads(path.read_text(encoding="utf-8"))["final"].keys()}
    assert len(files) >= 17 and without == set()


def test_no_plot_of_curves_is_wider_than_three_and_a_half_times_its_height():
    wide = {str(path.relative_to(FIGURES).with_suffix("")) for path in FIGURES.rglob("*.png")
            if path.stem.endswith(CURVE_PLOTS) and aspect(path) > MAX_ASPECT}
    assert wide == set()


def test_the_size_is_read_from_the_png_header(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(4, 1), dpi=50)
    fig.savefig(tmp_path / "strip.png")
    plt.close(fig)
    assert png_size(tmp_path / "strip.png") == (200, 50)
