"""galaxy_vae.py: the loader (both label layouts, the cache, every bad input counted), the three
architectures as the task names them, the loss against an independent computation, the
conditional model, and a smoke run per architecture with --load giving the same final block.

Synthetic JPEGs and label files are written here (conftest.write_galaxies); one test reads 120 of
the real images when ../shared/data is present. Runs use --image-size 32 to stay fast.
"""
import concurrent.futures
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import common
import galaxy_vae as gv
from conftest import DEVICE_FLAGS, SHARED_DATA, assert_one_line_error, run_script, write_galaxies

# Kaggle's training_solutions_rev1.csv header, written out as the competition ships it
KAGGLE_HEADER = ("GalaxyID,Class1.1,Class1.2,Class1.3,Class2.1,Class2.2,Class3.1,Class3.2,Class4.1,"
                 "Class4.2,Class5.1,Class5.2,Class5.3,Class5.4,Class6.1,Class6.2,Class7.1,Class7.2,"
                 "Class7.3,Class8.1,Class8.2,Class8.3,Class8.4,Class8.5,Class8.6,Class8.7,Class9.1,"
                 "Class9.2,Class9.3,Class10.1,Class10.2,Class10.3,Class11.1,Class11.2,Class11.3,"
                 "Class11.4,Class11.5,Class11.6")


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    root = tmp_path_factory.mktemp("galaxy")
    ids = write_galaxies(root)
    return root, ids


def kaggle_csv(path, ids, generator=None):
    """37 probabilities per galaxy in Kaggle's layout; galaxy i's largest answer is column
    (i % 5) * 7 + 1, so the argmax classes are known."""
    generator = generator or torch.Generator().manual_seed(0)
    lines = [KAGGLE_HEADER]
    for i, galaxy in enumerate(ids):
        p = torch.rand(37, generator=generator) * 0.3
        p[(i % 5) * 7] = 0.9
        lines.append(galaxy + "," + ",".join(f"{v:.6f}" for v in p.tolist()))
    path.write_text("\n".join(lines) + "\n")
    return path


def args_for(root, out, *extra):
    return ["--images-dir", str(root / "images_training_rev1"), "--out-dir", str(out),
            "--cache-dir", str(out / "cache"), "--image-size", "32", "--workers", "2",
            *DEVICE_FLAGS, *map(str, extra)]


def parse(root, out, *extra):
    return gv.parse_args(args_for(root, out, *extra))


# --- data ---------------------------------------------------------------------------------------
def test_labels_file_classes_and_stratified_split(galaxies, tmp_path, capsys):
    root, ids = galaxies
    args = parse(root, tmp_path, "--labels", root / "labels.csv", "--test-fraction", "0.25")
    data, classes = gv.load_galaxies(args)
    assert classes["names"] == ["other", "spiral_odd"] and classes["counts"] == [32, 16]
    assert data["x"].shape == (48, 3, 32, 32) and data["x"].dtype == torch.uint8
    assert torch.equal(data["c"], F.one_hot(data["y"], 2).float())
    train, test = gv.split(data, 0.25, 0, None, "cpu")
    assert torch.bincount(test["y"]).tolist() == [8, 4]  # a quarter of each class
    assert sorted(train["ids"] + test["ids"]) == sorted(ids)
    assert "one 'class' label per galaxy" in capsys.readouterr().out


def test_decode_is_a_centre_crop_then_resize(tmp_path):
    """A 100x100 image whose centre 40x40 is white and the rest black: crop 40 → all white."""
    from PIL import Image
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    image.paste((255, 255, 255), (30, 30, 70, 70))
    image.save(tmp_path / "1.jpg", quality=100)
    data, error = gv.decode_jpeg((str(tmp_path / "1.jpg"), 40, 8))
    pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    assert error is None and len(pixels) == 8 * 8 * 3 and pixels.min() > 240
    data, _ = gv.decode_jpeg((str(tmp_path / "1.jpg"), 100, 10))  # whole frame: dark corners
    assert torch.frombuffer(bytearray(data), dtype=torch.uint8)[:3].max() < 15


def test_the_cache_is_used_on_the_second_run(galaxies, tmp_path, capsys, monkeypatch):
    root, _ = galaxies
    args = parse(root, tmp_path)
    first, ids = gv.load_images(args.images_dir, args.crop, 32, args.cache_dir, 2)
    assert "cached 48 decoded images" in capsys.readouterr().out

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although the cache holds these images")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_decoding)
    second, ids_again = gv.load_images(args.images_dir, args.crop, 32, args.cache_dir, 2)
    assert torch.equal(first, second) and ids == ids_again
    assert "from the cache" in capsys.readouterr().out
    # another size is another cache entry: decoding is needed again
    with pytest.raises(AssertionError, match="decoded again"):
        gv.load_images(args.images_dir, args.crop, 64, args.cache_dir, 2)


def test_a_damaged_cache_is_decoded_again(galaxies, tmp_path, capsys):
    root, _ = galaxies
    args = parse(root, tmp_path)
    first, _ = gv.load_images(args.images_dir, args.crop, 32, args.cache_dir, 2)
    (cache,) = (tmp_path / "cache").iterdir()
    cache.write_bytes(cache.read_bytes()[:1000])
    again, _ = gv.load_images(args.images_dir, args.crop, 32, args.cache_dir, 2)
    assert torch.equal(first, again) and "is damaged" in capsys.readouterr().out


def test_kaggle_layout_argmax_and_q1(galaxies, tmp_path, capsys):
    root, ids = galaxies
    labels = kaggle_csv(tmp_path / "training_solutions_rev1.csv", ids)
    args = parse(root, tmp_path, "--labels", labels)
    data, classes = gv.load_galaxies(args)
    assert "Kaggle's 37 probabilities" in capsys.readouterr().out
    # the largest answers sit in answer columns 1, 8, 15, 22, 29 of the header above
    assert classes["names"] == ["Class1.1", "Class4.1", "Class6.2", "Class8.4", "Class10.1"]
    assert data["c"].shape == (48, 37) and classes["conditions"].shape == (5, 37)
    expected = [int(ids.index(g)) % 5 for g in data["ids"]]
    assert data["y"].tolist() == expected
    args = parse(root, tmp_path, "--labels", labels, "--class-scheme", "q1")
    data, classes = gv.load_galaxies(args)
    assert classes["names"] == list(gv.Q1_NAMES)
    # question 1 is columns 1-3; only galaxies with i % 5 == 0 have their 0.9 there (on Class1.1)
    assert all((y == 0) for y, g in zip(data["y"].tolist(), data["ids"]) if ids.index(g) % 5 == 0)


def test_every_bad_input_is_counted_and_named(galaxies, tmp_path, capsys):
    root, ids = galaxies
    copy = tmp_path / "galaxy"
    shutil.copytree(root, copy)
    folder = copy / "images_training_rev1"
    (folder / f"{ids[0]}.jpg").write_bytes((folder / f"{ids[0]}.jpg").read_bytes()[:400])  # truncated
    (folder / "999001.jpg").write_text("not an image")                                     # garbage
    from PIL import Image
    Image.new("RGB", (40, 40)).save(folder / "999002.jpg", format="PNG")                   # a PNG
    (folder / "notes.txt").write_text("x")                                                 # not .jpg
    (folder / f"{ids[1]}.jpg").unlink()                                                    # label, no image
    labels = kaggle_csv(copy / "solutions.csv", ids[2:] + ["555"])                         # no image either
    text = labels.read_text().splitlines()
    text[3] = text[3].rsplit(",", 1)[0] + ",1.5"                                           # outside [0, 1]
    text[4] = text[4].rsplit(",", 1)[0] + ",abc"                                           # not a number
    text[5] = text[5] + ",0.1"                                                             # 39 fields
    labels.write_text("\n".join(text + [text[6]]) + "\n")                                  # repeated id
    args = gv.parse_args(args_for(copy, tmp_path / "out", "--labels", labels))
    data, classes = gv.load_galaxies(args)
    out = capsys.readouterr().out
    for line in ("1 entries of", "3 image files cannot be used", "999001.jpg: unreadable",
                 "999002.jpg: not a JPEG (PNG)", "rows with the wrong number of fields",
                 "1 rows repeat a GalaxyID", "1 rows hold a value that is not a number",
                 "1 rows hold a probability outside [0, 1]", "1 label rows have no image",
                 "images have no label row"):
        assert line in out, (line, out)
    assert all(line.startswith("warning: ") for line in out.splitlines() if "first:" in line)
    # every image is either used or reported: 48 written, one deleted, two foreign files added
    reported = 3 + int(out.split(" images have no label row")[0].rsplit("warning: ", 1)[1])
    assert len(data["ids"]) + reported == 48 - 1 + 2


@pytest.mark.parametrize("setup, phrase", [
    (lambda d: (d / "labels.csv").write_text("id,kind,score\n1,a,2\n"), "unknown header"),
    (lambda d: (d / "labels.csv").write_bytes(b"\xff\xfe\x00\x01" * 50), "is not a text CSV"),
    (lambda d: (d / "labels.csv").write_text(""), "is empty"),
    (lambda d: [p.write_text("x") for p in (d / "images_training_rev1").glob("*.jpg")], "no readable JPEG"),
    (lambda d: shutil.rmtree(d / "images_training_rev1") or (d / "images_training_rev1").write_text("x"),
     "is not a folder"),
])
def test_bad_input_that_stops_the_run(setup, phrase, galaxies, tmp_path):
    root, _ = galaxies
    copy = tmp_path / "galaxy"
    shutil.copytree(root, copy)
    setup(copy)
    result = run_script("galaxy_vae.py", *args_for(copy, tmp_path / "out", "--labels", copy / "labels.csv",
                                                   "--epochs", "1"))
    assert_one_line_error(result, phrase)


def test_conditional_needs_labels(galaxies, tmp_path):
    result = run_script("galaxy_vae.py", *args_for(galaxies[0], tmp_path, "--conditional"))
    assert_one_line_error(result, "--conditional needs --labels")


# --- models -------------------------------------------------------------------------------------
def layer_outputs(module, x, kinds):
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in module.modules() if isinstance(m, kinds)]
    module(x)
    for h in hooks:
        h.remove()
    return shapes


def test_mlp_is_three_hidden_layers_of_512():
    model = gv.GalaxyVAE("mlp", latent_dim=50, size=64)
    assert layer_outputs(model.encoder, torch.rand(2, 3, 64, 64), torch.nn.Linear) == [(512,)] * 3
    assert layer_outputs(model.decoder, torch.randn(2, 50), torch.nn.Linear) == [(512,)] * 3 + [(12288,)]


def test_conv_is_five_stride_2_convolutions_from_32_filters_doubling():
    model = gv.GalaxyVAE("conv", latent_dim=50, size=64)
    assert layer_outputs(model.encoder, torch.rand(2, 3, 64, 64), torch.nn.Conv2d) == [
        (32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert layer_outputs(model.decoder, torch.randn(2, 50), torch.nn.ConvTranspose2d) == [
        (256, 4, 4), (128, 8, 8), (64, 16, 16), (32, 32, 32), (3, 64, 64)]


def test_resnet_is_five_residual_blocks_each_way():
    model = gv.GalaxyVAE("resnet", latent_dim=50, size=64)
    for part, x, sides in ((model.encoder, torch.rand(2, 3, 64, 64), [32, 16, 8, 4, 2]),
                           (model.decoder, torch.randn(2, 50), [4, 8, 16, 32, 64])):
        blocks = [m for m in part.modules() if isinstance(m, gv.ResidualBlock)]
        assert len(blocks) == 5
        assert [s[-1] for s in layer_outputs(part, x, gv.ResidualBlock)] == sides
    block = gv.ResidualBlock(16, 16)  # same shape and channels: the identity shortcut
    assert isinstance(block.shortcut, torch.nn.Identity)
    x = torch.randn(2, 16, 8, 8)
    block.eval()
    assert torch.allclose(block(x), F.leaky_relu(block.residual(x) + x, 0.2))
    assert isinstance(gv.ResidualBlock(16, 32, 0.5).shortcut[0], torch.nn.Conv2d)  # projection


@pytest.mark.parametrize("arch", gv.ARCHS)
def test_every_architecture_maps_images_to_logits_of_the_same_shape(arch):
    model = gv.GalaxyVAE(arch, latent_dim=7, size=32, cond_dim=3)
    logits, mu, logvar = model(torch.rand(4, 3, 32, 32), torch.eye(3)[[0, 1, 2, 0]], torch.Generator())
    assert logits.shape == (4, 3, 32, 32) and mu.shape == logvar.shape == (4, 7)


def test_conditional_samples_follow_the_class(galaxies, tmp_path):
    """The synthetic "other" galaxies are orange, the "spiral_odd" ones blue. After a short
    training, the same z decoded given "other" is redder at the centre than given "spiral_odd"."""
    root, _ = galaxies
    gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", "--conditional",
                     "--latent-dim", "4", "--batch-size", "16", "--epochs", "8"))
    model = gv.GalaxyVAE("conv", latent_dim=4, size=32, cond_dim=2)
    common.load_weights(tmp_path / "galaxy_vae_conv_cond.pt", gv.KIND, {"model": model}, "--load")
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    red_minus_blue = []
    for k in range(2):  # one-hot: 0 = other, 1 = spiral_odd (sorted names)
        centre = gv.decode(model, z, torch.eye(2)[[k] * 16])[:, :, 12:20, 12:20].mean((0, 2, 3))
        red_minus_blue.append((centre[0] - centre[2]).item())
    assert red_minus_blue[0] > red_minus_blue[1] + 0.05, red_minus_blue
    assert gv.GalaxyVAE("conv", latent_dim=4, size=32).to_mu.in_features == model.to_mu.in_features - 2


# --- loss against independent computations -----------------------------------------------------
def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    terms = gv.vae_loss(torch.zeros(6, 3, 2, 2), torch.rand(6, 3, 2, 2), mu.float(), logvar.float(), 0.5)
    expected = torch.distributions.kl_divergence(q, p).sum(1).float()
    assert torch.allclose(terms["kl"], expected, rtol=1e-5)
    assert torch.allclose(terms["loss"], terms["bce"] + 0.5 * expected, rtol=1e-5)


def test_bce_floor_and_mse_against_direct_formulas():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 5, 5, generator=generator, dtype=torch.float64).clamp(0.01, 0.99)
    logits = torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64)
    p = 1 / (1 + torch.exp(-logits))
    bce = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum((1, 2, 3))
    entropy = -(x * torch.log(x) + (1 - x) * torch.log(1 - x)).sum((1, 2, 3))
    terms = gv.vae_loss(logits.float(), x.float(), torch.zeros(4, 2), torch.zeros(4, 2), 1.0)
    assert torch.allclose(terms["bce"].double(), bce, rtol=1e-5)
    assert torch.allclose(gv.bce_floor(x.float()).double(), entropy, rtol=1e-4)
    assert (terms["bce"] > gv.bce_floor(x.float())).all()  # the floor is below any other decoder
    assert torch.allclose(gv.vae_loss(torch.logit(x.float()), x.float(), torch.zeros(4, 2), torch.zeros(4, 2), 1.0)["bce"],
                          gv.bce_floor(x.float()), rtol=1e-4)  # and reached by predicting x
    assert torch.allclose(gv.pixel_mse(logits.float(), x.float()).double(), ((p - x) ** 2).mean((1, 2, 3)), rtol=1e-5)


# --- runs -----------------------------------------------------------------------------------------
def final_block(out, name):
    return json.loads((out / f"{name}_metrics.json").read_text())["final"]


@pytest.mark.parametrize("arch, extra", [("mlp", []), ("conv", []), ("resnet", []),
                                         ("conv", ["--conditional"])])
def test_smoke_then_load_gives_the_same_final_block(arch, extra, galaxies, tmp_path):
    root, _ = galaxies
    flags = args_for(root, tmp_path, "--labels", root / "labels.csv", "--arch", arch,
                     "--latent-dim", "4", "--batch-size", "16", "--epochs", "2", *extra)
    gv.main(flags)
    name = f"galaxy_vae_{arch}{'_cond' if extra else ''}"
    for what in ("loss", "weights", "samples", "class_samples", "latent"):
        assert (tmp_path / f"{name}_{what}.png").stat().st_size > 1000
    first = final_block(tmp_path, name)
    assert first["epochs_trained"] == 2 and first["test_bce"] > first["test_bce_floor"] > 0
    gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", "--load", tmp_path / f"{name}.pt"))
    assert final_block(tmp_path, name) == first


def test_resume_continues_where_the_run_stopped(galaxies, tmp_path):
    root, _ = galaxies
    flags = args_for(root, tmp_path, "--arch", "mlp", "--latent-dim", "4", "--batch-size", "16")
    gv.main(flags + ["--epochs", "1"])
    gv.main(flags + ["--epochs", "2", "--resume"])
    resumed = json.loads((tmp_path / "galaxy_vae_mlp_metrics.json").read_text())
    gv.main(args_for(root, tmp_path / "straight", "--arch", "mlp", "--latent-dim", "4",
                     "--batch-size", "16", "--epochs", "2"))
    straight = json.loads((tmp_path / "straight" / "galaxy_vae_mlp_metrics.json").read_text())
    assert [r["test_bce"] for r in resumed["history"]] == [r["test_bce"] for r in straight["history"]]


def test_unsupervised_skips_the_class_figures_and_the_overlay_needs_all_three(galaxies, tmp_path, capsys):
    root, _ = galaxies
    for arch in gv.ARCHS:
        gv.main(args_for(root, tmp_path, "--arch", arch, "--latent-dim", "3", "--epochs", "1",
                         "--batch-size", "24"))
        assert (tmp_path / "galaxy_vae_architectures.png").exists() == (arch == gv.ARCHS[-1])
    assert "the class figures (class samples, latent colours) are skipped" in capsys.readouterr().out
    assert not (tmp_path / "galaxy_vae_conv_latent.png").exists()


def test_load_refuses_other_classes_for_a_conditional_model(galaxies, tmp_path):
    root, ids = galaxies
    gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", "--conditional",
                     "--latent-dim", "3", "--epochs", "1"))
    relabelled = tmp_path / "other_labels.csv"
    relabelled.write_text("GalaxyID,kind\n" + "\n".join(f"{g},{'a' if i % 2 else 'b'}" for i, g in enumerate(ids)))
    result = run_script("galaxy_vae.py", *args_for(root, tmp_path, "--labels", relabelled,
                                                   "--load", tmp_path / "galaxy_vae_conv_cond.pt"))
    assert_one_line_error(result, "was conditioned on the classes ['other', 'spiral_odd']")


def test_real_galaxy_images(tmp_path, capsys):
    """120 of the real JPEGs with the real labels.csv: decoded, matched and reported."""
    real = SHARED_DATA / "galaxy"
    if not (real / "images_training_rev1").is_dir():
        pytest.skip(f"real galaxy images not found at {real}")
    folder = tmp_path / "images_training_rev1"
    folder.mkdir()
    for path in sorted((real / "images_training_rev1").glob("*.jpg"))[:120]:
        shutil.copy(path, folder)
    args = gv.parse_args(["--images-dir", str(folder), "--labels", str(real / "labels.csv"),
                          "--cache-dir", str(tmp_path / "cache"), "--workers", "2"])
    data, classes = gv.load_galaxies(args)
    out = capsys.readouterr().out
    assert data["x"].shape == (120, 3, 64, 64) and sum(classes["counts"]) == 120
    assert "4880 label rows have no image" in out
    # the galaxy sits in the middle of a dark frame: the centre is brighter than the border
    x = data["x"].float()
    assert x[:, :, 24:40, 24:40].mean() > 2 * x[:, :, :4, :].mean()


class Pixels(torch.nn.Module):
    """A stand-in encoder whose μ is the mean colour of the image: red-minus-blue separates the
    synthetic classes, so a linear probe on it must find them; shuffled labels it must not."""
    cond_dim = 0

    def encode(self, x, c=None):
        colour = x.mean((2, 3))
        return colour, torch.zeros_like(colour)


def test_latent_probe_finds_a_linear_class_and_not_a_random_one(galaxies, tmp_path):
    root, _ = galaxies
    data, _ = gv.load_galaxies(parse(root, tmp_path, "--labels", root / "labels.csv"))
    train, test = gv.split(data, 0.3, 0, None, "cpu")
    assert gv.latent_probe(Pixels(), train, test, 2)["latent_probe_test_balanced_accuracy"] == 1.0
    shuffled = [dict(part, y=part["y"][torch.randperm(len(part["y"]), generator=torch.Generator().manual_seed(1))])
                for part in (train, test)]
    assert gv.latent_probe(Pixels(), *shuffled, 2)["latent_probe_test_balanced_accuracy"] < 0.8


def test_active_dims_counts_the_dimensions_whose_mean_varies(galaxies, tmp_path):
    class Encoder(torch.nn.Module):
        cond_dim = 0

        def encode(self, x, c=None):  # dims 0-1 follow the image, dim 2 barely moves, dim 3 is constant
            colour = x.mean((2, 3))
            mu = torch.stack([colour[:, 0] * 10, colour[:, 2] * 10, colour[:, 1] * 1e-3, torch.zeros(len(x))], 1)
            return mu, torch.zeros_like(mu)

    root, _ = galaxies
    data, _ = gv.load_galaxies(parse(root, tmp_path))
    assert gv.active_dims(Encoder(), data) == 2


def test_an_unknown_sample_class_stops_before_training(galaxies, tmp_path):
    root, _ = galaxies
    result = run_script("galaxy_vae.py", *args_for(root, tmp_path, "--labels", root / "labels.csv",
                                                   "--sample-class", "barred", "--epochs", "1"))
    assert_one_line_error(result, "--sample-class 'barred' is not one of ['other', 'spiral_odd']")
    assert not (tmp_path / "galaxy_vae_conv.pt").exists()
