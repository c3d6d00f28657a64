"""galaxy_vae.py: the loader (both label layouts, the cache, every bad input counted), the three
architectures as the task names them, the loss against an independent computation, the
conditional model, a smoke run per architecture with --load giving the same final block, and the
training step against a hand-written step on the documented loss (with --kl-weight 0.3, the
condition, the [0, 1] scaling at the encoder's input, Adam at --lr, --amp, the split's knobs).

Synthetic JPEGs and label files are written here (conftest.write_galaxies); one test reads 120 of
the real images when ../shared/data is present. Runs use --image-size 32 to stay fast.
"""
import concurrent.futures
import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import common
import galaxy_vae as gv
from conftest import (DEVICE_FLAGS, ROOT, SHARED_DATA, adam_by_hand, assert_one_line_error, record_gradients, run_script,
                      write_galaxies)

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


def load(args):
    """galaxy_vae.py's data as its main reads it."""
    return common.load_galaxies(args.images_dir, args.labels, args.class_scheme, args.crop, args.image_size,
                                args.cache_dir, args.workers)


def parse(root, out, *extra):
    return gv.parse_args(args_for(root, out, *extra))


# --- data ---------------------------------------------------------------------------------------
def test_labels_file_classes_and_stratified_split(galaxies, tmp_path, capsys):
    root, ids = galaxies
    args = parse(root, tmp_path, "--labels", root / "labels.csv", "--test-fraction", "0.25")
    data, classes = load(args)
    assert classes["names"] == ["other", "spiral_odd"] and classes["counts"] == [32, 16]
    assert data["x"].shape == (48, 3, 32, 32) and data["x"].dtype == torch.uint8
    assert torch.equal(data["c"], F.one_hot(data["y"], 2).float())
    train, test = common.split_galaxies(data, 0.25, 0, None, "cpu")
    assert torch.bincount(test["y"]).tolist() == [8, 4]  # a quarter of each class
    assert sorted(train["ids"] + test["ids"]) == sorted(ids)
    assert "one 'class' label per galaxy" in capsys.readouterr().out


def test_decode_is_a_centre_crop_then_resize(tmp_path):
    """A 100x100 image whose centre 40x40 is white and the rest black: crop 40 → all white."""
    from PIL import Image
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    image.paste((255, 255, 255), (30, 30, 70, 70))
    image.save(tmp_path / "1.jpg", quality=100)
    data, error = common.decode_jpeg((str(tmp_path / "1.jpg"), 40, 8))
    pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    assert error is None and len(pixels) == 8 * 8 * 3 and pixels.min() > 240
    data, _ = common.decode_jpeg((str(tmp_path / "1.jpg"), 100, 10))  # whole frame: dark corners
    assert torch.frombuffer(bytearray(data), dtype=torch.uint8)[:3].max() < 15


def test_the_cache_is_used_on_the_second_run(galaxies, tmp_path, capsys, monkeypatch):
    root, _ = galaxies
    args = parse(root, tmp_path)
    first, ids = common.load_images(args.images_dir, args.crop, 32, args.cache_dir, 2)
    assert "cached 48 decoded images" in capsys.readouterr().out

    def no_decoding(*a, **k):
        raise AssertionError("decoded again although the cache holds these images")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_decoding)
    second, ids_again = common.load_images(args.images_dir, args.crop, 32, args.cache_dir, 2)
    assert torch.equal(first, second) and ids == ids_again
    assert "from the cache" in capsys.readouterr().out
    # another size is another cache entry: decoding is needed again
    with pytest.raises(AssertionError, match="decoded again"):
        common.load_images(args.images_dir, args.crop, 64, args.cache_dir, 2)


def test_a_damaged_cache_is_decoded_again(galaxies, tmp_path, capsys):
    root, _ = galaxies
    args = parse(root, tmp_path)
    first, _ = common.load_images(args.images_dir, args.crop, 32, args.cache_dir, 2)
    (cache,) = (tmp_path / "cache").iterdir()
    cache.write_bytes(cache.read_bytes()[:1000])
    again, _ = common.load_images(args.images_dir, args.crop, 32, args.cache_dir, 2)
    assert torch.equal(first, again) and "is damaged" in capsys.readouterr().out


def test_kaggle_layout_argmax_and_q1(galaxies, tmp_path, capsys):
    root, ids = galaxies
    labels = kaggle_csv(tmp_path / "training_solutions_rev1.csv", ids)
    args = parse(root, tmp_path, "--labels", labels)
    data, classes = load(args)
    assert "Kaggle's 37 probabilities" in capsys.readouterr().out
    # the largest answers sit in answer columns 1, 8, 15, 22, 29 of the header above
    assert classes["names"] == ["Class1.1", "Class4.1", "Class6.2", "Class8.4", "Class10.1"]
    assert data["c"].shape == (48, 37) and classes["conditions"].shape == (5, 37)
    expected = [int(ids.index(g)) % 5 for g in data["ids"]]
    assert data["y"].tolist() == expected
    args = parse(root, tmp_path, "--labels", labels, "--class-scheme", "q1")
    data, classes = load(args)
    assert classes["names"] == list(common.Q1_NAMES)
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
    data, classes = load(args)
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


def test_the_widths_are_a_parameter_stored_with_the_weights(galaxies, tmp_path, monkeypatch):
    """Other widths (here four stages) build other models, are saved in the weights file and
    rebuilt by --load whatever CHANNELS says then; an image side they cannot halve is one line."""
    model = gv.GalaxyVAE("conv", latent_dim=5, size=32, channels=(8, 16, 32, 64))
    assert layer_outputs(model.encoder, torch.rand(2, 3, 32, 32), torch.nn.Conv2d)[-1] == (64, 2, 2)
    root, _ = galaxies
    monkeypatch.setattr(gv, "CHANNELS", (8, 16, 32, 64))
    gv.main(args_for(root, tmp_path, "--latent-dim", "3", "--epochs", "1", "--limit", "16"))
    weights = tmp_path / "galaxy_vae_conv_e1_limit16_size32_z3.pt"
    assert common.load_checkpoint(weights, gv.KIND)["channels"] == [8, 16, 32, 64]
    first = final_block(tmp_path, weights.stem)
    monkeypatch.setattr(gv, "CHANNELS", (4, 8))  # a later edit: --load still builds the file's widths
    gv.main(args_for(root, tmp_path, "--limit", "16", "--load", weights))
    assert final_block(tmp_path, weights.stem) == first
    monkeypatch.undo()
    result = run_script("galaxy_vae.py", *args_for(root, tmp_path, "--image-size", "48", "--epochs", "1"))
    assert_one_line_error(result, "--image-size 48 does not fit the 5 stride-2 stages",
                          "a multiple of 2^5 = 32")


@pytest.mark.parametrize("arch", gv.ARCHS)
def test_every_architecture_maps_images_to_logits_of_the_same_shape(arch):
    model = gv.GalaxyVAE(arch, latent_dim=7, size=32, cond_dim=3)
    logits, mu, logvar = model(torch.rand(4, 3, 32, 32), torch.eye(3)[[0, 1, 2, 0]], torch.Generator())
    assert logits.shape == (4, 3, 32, 32) and mu.shape == logvar.shape == (4, 7)


@pytest.mark.slow
def test_conditional_samples_follow_the_class(galaxies, tmp_path):
    """The synthetic "other" galaxies are orange, the "spiral_odd" ones blue. After a short
    training, the same z decoded given "other" is redder at the centre than given "spiral_odd"."""
    root, _ = galaxies
    gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", "--conditional",
                     "--latent-dim", "4", "--batch-size", "16", "--epochs", "8"))
    model = gv.GalaxyVAE("conv", latent_dim=4, size=32, cond_dim=2)
    common.load_weights(tmp_path / "galaxy_vae_conv_cond_e8_bs16_size32_z4.pt", gv.KIND, {"model": model}, "--load")
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


# --- the judge: a classifier of real galaxies that scores generated ones -----------------------
def test_film_is_the_identity_at_the_start_and_feature_wise_after():
    """A fresh FiLM model decodes exactly as the concat model of the same seed; with random FiLM
    weights, each hidden layer's output is h·(1 + γ(c)) + β(c) with one γ, β per channel."""
    torch.manual_seed(0)
    concat = gv.GalaxyVAE("conv", 3, 32, cond_dim=2)
    torch.manual_seed(0)
    film = gv.GalaxyVAE("conv", 3, 32, cond_dim=2, condition="film")
    z, c = torch.randn(4, 3), torch.eye(2)[[0, 1, 1, 0]]
    concat.eval(), film.eval()
    assert torch.equal(concat.decode(z, c), film.decode(z, c))
    layer = gv.FiLM(2, 5)
    with torch.no_grad():
        layer.to_gamma_beta.weight.copy_(torch.arange(20.).view(10, 2))
        layer.to_gamma_beta.bias.copy_(torch.arange(10.))
    h = torch.randn(2, 5, 3, 3)
    gamma_beta = torch.eye(2) @ torch.arange(20.).view(10, 2).T + torch.arange(10.)  # (2, 10)
    expected = h * (1 + gamma_beta[:, :5, None, None]) + gamma_beta[:, 5:, None, None]
    assert torch.allclose(layer(h, torch.eye(2)), expected)


def test_balanced_accuracy_and_class_weights_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    # recalls 3/4, 1/2, 0/1: their mean; plain accuracy would be 4/7
    assert gv.balanced_accuracy(predicted, labels, 3) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert gv.balanced_accuracy(predicted, labels, 4) == pytest.approx((0.75 + 0.5 + 0.0) / 3)  # absent class 3
    assert torch.allclose(gv.class_weights(labels, 3), torch.tensor([7 / 12, 7 / 6, 7 / 3]))


def test_random_symmetry_gives_each_image_one_of_the_eight_symmetries_of_the_square():
    images = torch.rand(64, 3, 5, 5)
    out = gv.random_symmetry(images, torch.Generator().manual_seed(0))
    symmetries = lambda x: [torch.rot90(m, k, dims=(1, 2)) for m in (x, x.flip(2)) for k in range(4)]
    chosen = [[torch.equal(o, s) for s in symmetries(x)].index(True) for x, o in zip(images, out)]
    assert sorted(set(chosen)) == list(range(8))  # all eight occur over 64 images


class ColourDecoder(gv.GalaxyVAE):
    """A stand-in decoder: images red for class 0 and blue for class 1 (shows_class True), grey
    (False: ignores the class), or blue for class 1 only where z₁ > 0 ("half")."""

    def __init__(self, shows_class):
        super().__init__("mlp", latent_dim=2, size=4, cond_dim=2)
        self.shows_class = shows_class

    def decode(self, z, c=None):
        blue = c[:, 1] * (z[:, 0] > 0) if self.shows_class == "half" else c[:, 1]
        colour = torch.stack([1 - blue, torch.zeros(len(c)), blue], 1) if self.shows_class else torch.ones(len(c), 3)
        return torch.logit(colour.clamp(0.1, 0.9))[:, :, None, None].expand(-1, -1, 4, 4)


class ColourJudge(torch.nn.Module):
    """A stand-in judge: class 0 for red images, 1 for blue ones."""

    def forward(self, x):
        return torch.stack([x[:, 0].mean((1, 2)), x[:, 2].mean((1, 2))], 1)


def test_generated_class_score_reads_the_class_the_judge_sees():
    """A decoder that shows the class scores 1; one that ignores it 1/2 (balanced, whatever the
    judge's bias); one that half-shows it: recall of class 1 = the share of its draws with z₁ > 0,
    recomputed here from the seeded draws, and balanced accuracy the mean of the two recalls, with
    the class asked for as the truth."""
    classes = {"names": ["red", "blue"], "conditions": torch.eye(2)}
    shown = gv.generated_class_score(ColourDecoder(True), ColourJudge(), classes, seed=0, n=10)
    ignored = gv.generated_class_score(ColourDecoder(False), ColourJudge(), classes, seed=0, n=10)
    half = gv.generated_class_score(ColourDecoder("half"), ColourJudge(), classes, seed=3, n=40)
    assert shown == {"generated_balanced_accuracy": 1.0, "generated_recall_red": 1.0, "generated_recall_blue": 1.0}
    assert ignored["generated_balanced_accuracy"] == 0.5
    draws = torch.Generator().manual_seed(3)
    torch.randn(40, 2, generator=draws)  # class 0's draws
    share = (torch.randn(40, 2, generator=draws)[:, 0] > 0).float().mean().item()  # class 1's
    assert 0.2 < share < 0.8 and half["generated_recall_blue"] == pytest.approx(share)
    assert half["generated_balanced_accuracy"] == pytest.approx((1 + share) / 2)


def test_reconstructed_class_score_judges_the_decoded_means_given_their_own_class():
    """Real images of classes 0, 0, 0, 1 reconstructed by a decoder that draws the class it is
    given: the judge sees their own classes (1.0); labels that disagree with the conditions the
    images carry score what the judge sees against the labels (3 of class 0 seen as 1: 0.0 and
    1.0 for the two recalls here)."""
    classes = {"names": ["red", "blue"], "conditions": torch.eye(2)}
    data = {"x": torch.zeros(4, 3, 4, 4, dtype=torch.uint8), "y": torch.tensor([0, 0, 0, 1]),
            "c": torch.eye(2)[[0, 0, 0, 1]]}
    def score(decoder, data):
        return gv.reconstructed_class_score(ColourJudge(), gv.reconstructions(decoder, data), data, classes)

    assert score(ColourDecoder(True), data) == 1.0
    assert score(ColourDecoder(True), {**data, "c": torch.eye(2)[[1, 1, 1, 1]]}) == 0.5
    assert score(ColourDecoder(False), data) == 0.5


def test_one_judge_step_is_adam_on_the_class_weighted_cross_entropy_of_a_symmetry(monkeypatch):
    """fit_classifier's first step: the images the judge is given are each one of the eight
    symmetries of its [0, 1] image (recorded by a forward pre-hook); the gradient the optimizer
    uses is that of the cross-entropy weighted n / (K · n_k), written by hand with log_softmax
    and gather (unequal classes, 3 and 1, so a missing weight changes it); the update is Adam at
    the cosine schedule's first rate, --lr 0.003 (Kingma & Ba, by hand)."""
    args = gv.parse_args(["--experiment", "classifier", "--labels", "labels.csv", "--lr", "0.003",
                          "--batch-size", "4", "--epochs", "1"])
    torch.manual_seed(0)
    model = gv.GalaxyClassifier(2)
    reference, before = copy.deepcopy(model), [p.detach().clone() for p in model.parameters()]
    train = {"x": torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), "y": torch.tensor([0, 0, 1, 0])}
    inputs, used = [], []
    model.register_forward_pre_hook(lambda m, x: inputs.append(x[0].detach().clone()) if m.training else None)
    adam = torch.optim.Adam

    def recording_adam(params, **kwargs):
        optimizer = adam(params, **kwargs)
        used.append(record_gradients(optimizer, list(model.parameters())))
        return optimizer

    class OneStep(common.Run):  # the epoch's bookkeeping is not this test's: stop at the log line
        def log(self, step, record):
            raise StopIteration

    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    monkeypatch.setattr(common, "Run", OneStep)
    monkeypatch.setattr(gv, "judge_real", lambda *a, **k: {})
    with pytest.raises(StopIteration):
        gv.fit_classifier(model, train, train, args, "unused", torch.Generator().manual_seed(1),
                          {"names": ["a", "b"]})
    images = inputs[0]
    batch = train["x"].float() / 255
    symmetries = lambda x: [torch.rot90(m, k, dims=(1, 2)) for m in (x, x.flip(2)) for k in range(4)]
    order = [next(j for j in range(4) if any(torch.equal(images[i], s) for s in symmetries(batch[j])))
             for i in range(4)]  # which training image each input is a symmetry of
    assert sorted(order) == [0, 1, 2, 3]
    assert any(not torch.equal(images[i], batch[order[i]]) for i in range(4))  # turned or mirrored
    labels = train["y"][order]
    weights = torch.tensor([4 / (2 * 3), 4 / (2 * 1)])
    log_p = torch.log_softmax(reference(images), 1).gather(1, labels[:, None]).squeeze(1)
    loss = -(weights[labels] * log_p).sum() / weights[labels].sum()
    gradients = torch.autograd.grad(loss, list(reference.parameters()))
    (seen,) = used[0]
    for (name, _), got, want in zip(model.named_parameters(), seen, gradients):
        assert close(got, want), name
    expected = adam_by_hand(before, seen, {}, 0.003)
    for (name, param), want in zip(model.named_parameters(), expected):
        assert torch.allclose(param.detach(), want, rtol=1e-5, atol=1e-7), name


@pytest.mark.slow
def test_a_conditional_run_is_scored_by_the_judge_and_reload_repeats_the_score(galaxies, tmp_path, capsys):
    """--experiment classifier writes the judge; a conditional run finds it in --out-dir and
    records its score on generated galaxies beside the judge's own on real test images; --load
    repeats the final block; without a judge the run says so and records no score."""
    root, _ = galaxies
    common_flags = ["--labels", root / "labels.csv", "--batch-size", "16", "--epochs", "1"]
    gv.main(args_for(root, tmp_path, "--experiment", "classifier", *common_flags))
    judge = final_block(tmp_path, "galaxy_classifier_e1_bs16_size32")
    assert 0 <= judge["test_balanced_accuracy"] <= 1 and judge["epochs_trained"] == 1
    flags = args_for(root, tmp_path, "--conditional", "--condition", "film", "--latent-dim", "3",
                     "--classifier-weights", tmp_path / "galaxy_classifier_e1_bs16_size32.pt", *common_flags)
    gv.main(flags)
    name = "galaxy_vae_conv_cond_e1_bs16_size32_z3_film"
    first = final_block(tmp_path, name)
    for key in ("test_balanced_accuracy", "test_acc", "test_ce"):  # the judge's own numbers, CE weighted alike
        assert first[f"judge_real_{key}"] == pytest.approx(judge[key]), key
    assert first["generated_to_real_ratio"] == pytest.approx(
        first["generated_balanced_accuracy"] / first["judge_real_test_balanced_accuracy"])
    assert {"generated_recall_other", "generated_recall_spiral_odd", "judge_reconstructed_test_balanced_accuracy",
            "frechet_generated", "frechet_generated_spiral_odd", "frechet_reconstructed", "frechet_floor"} <= set(first)
    test_size = json.loads((tmp_path / f"{name}_metrics.json").read_text())["data"]["test"]
    assert first["frechet_n"] == test_size and first["frechet_floor"] < first["frechet_generated"]
    gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", "--load", tmp_path / f"{name}.pt",
                     "--classifier-weights", tmp_path / "galaxy_classifier_e1_bs16_size32.pt"))
    assert final_block(tmp_path, name) == first
    capsys.readouterr()
    gv.main(args_for(root, tmp_path / "alone", "--conditional", "--latent-dim", "3", *common_flags))
    assert "no judge at" in capsys.readouterr().out
    assert "generated_balanced_accuracy" not in final_block(tmp_path / "alone", "galaxy_vae_conv_cond_e1_bs16_size32_z3")


def test_the_judge_flags_refuse_what_they_cannot_use(galaxies, tmp_path):
    root, ids = galaxies
    base = args_for(root, tmp_path, "--labels", root / "labels.csv", "--epochs", "1", "--latent-dim", "3")
    assert_one_line_error(run_script("galaxy_vae.py", *base, "--conditional", "--classifier-weights",
                                     tmp_path / "none.pt"), "--classifier-weights: no file at")
    assert_one_line_error(run_script("galaxy_vae.py", *base, "--conditional", "--helper-pool", "4"),
                          "--helper-pool is how the --class-loss-weight helper sees the images")
    assert_one_line_error(run_script("galaxy_vae.py", *base, "--condition", "film"),
                          "--condition film is how a --conditional model gets the class")
    assert_one_line_error(run_script("galaxy_vae.py", *base, "--experiment", "classifier", "--conditional"),
                          "--conditional is a VAE's")
    assert_one_line_error(run_script("galaxy_vae.py", *args_for(root, tmp_path, "--experiment", "classifier")),
                          "--experiment classifier needs --labels")
    relabelled = tmp_path / "abc.csv"
    relabelled.write_text("GalaxyID,kind\n" + "\n".join(f"{g},{'abc'[i % 3]}" for i, g in enumerate(ids)))
    gv.main(args_for(root, tmp_path, "--experiment", "classifier", "--labels", relabelled, "--epochs", "1"))
    assert_one_line_error(run_script("galaxy_vae.py", *base, "--conditional", "--classifier-weights",
                                     tmp_path / "galaxy_classifier_e1_size32.pt"),
                          "tells apart ['a', 'b', 'c'], not ['other', 'spiral_odd']")


# --- runs -----------------------------------------------------------------------------------------
def final_block(out, name):
    return json.loads((out / f"{name}_metrics.json").read_text())["final"]


@pytest.mark.slow
@pytest.mark.parametrize("arch, extra, tags", [
    ("mlp", [], ""), ("conv", [], ""), ("resnet", [], ""), ("conv", ["--conditional"], ""),
    ("conv", ["--gan-weight", "2", "--dis-l-weight", "0.01"], "_gan2_disl0.01")])
def test_smoke_then_load_gives_the_same_final_block(arch, extra, tags, galaxies, tmp_path):
    root, _ = galaxies
    flags = args_for(root, tmp_path, "--labels", root / "labels.csv", "--arch", arch,
                     "--latent-dim", "4", "--batch-size", "16", "--epochs", "2", *extra)
    gv.main(flags)
    cond = "_cond" if "--conditional" in extra else ""
    name = f"galaxy_vae_{arch}{cond}_e2_bs16_size32_z4{tags}"  # the knobs that differ
    for what in ("loss", "weights", "samples", "class_samples", "latent"):
        assert (tmp_path / f"{name}_{what}.png").stat().st_size > 1000
        width, height = Image.open(tmp_path / f"{name}_{what}.png").size
        assert width <= 3 * height, what
    first = final_block(tmp_path, name)
    assert first["epochs_trained"] == 2 and first["test_bce"] > first["test_bce_floor"] > 0
    gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", "--load", tmp_path / f"{name}.pt"))
    assert final_block(tmp_path, name) == first


def test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults():
    """The README's commands write the committed names; a changed knob writes beside them; data
    paths, the cache and the workers stay out; --load keeps the loaded file's name."""
    name = lambda *flags: gv.run_name(gv.parse_args([*flags, "--labels", "labels.csv"]))
    assert name("--arch", "conv", "--epochs", "100", "--amp") == "galaxy_vae_conv_e100_amp"
    assert name("--arch", "resnet", "--epochs", "30", "--amp") == "galaxy_vae_resnet_e30_amp"
    assert name("--conditional", "--epochs", "100", "--amp") == "galaxy_vae_conv_cond_e100_amp"
    assert name("--epochs", "20", "--lr", "3e-4", "--amp") == "galaxy_vae_conv_e20_lr0.0003_amp"
    assert name("--epochs", "20", "--lr", "1e-3", "--amp") == "galaxy_vae_conv_e20_amp"  # the default lr
    assert name("--latent-dim", "32", "--epochs", "1", "--limit", "200", "--data-dir", "d",
                "--images-dir", "i", "--cache-dir", "c", "--workers", "1", "--device", "cpu",
                "--out-dir", "o") == "galaxy_vae_conv_e1_limit200_z32"
    assert name("--arch", "mlp", "--kl-weight", "0.5", "--class-scheme", "q1", "--image-size", "32",
                "--sample-class", "other") == "galaxy_vae_mlp_q1_size32_kl0.5_class-other"
    assert name() == "galaxy_vae_conv"
    assert name("--load", "runs/galaxy_vae_conv_e100_amp.pt", "--epochs", "3") == "galaxy_vae_conv_e100_amp"
    assert name("--conditional", "--condition", "film", "--class-loss-weight", "30", "--amp",
                "--classifier-weights", "j.pt") == "galaxy_vae_conv_cond_amp_film_classloss30"
    assert name("--conditional", "--class-loss-weight", "30", "--helper-pool", "4") == "galaxy_vae_conv_cond_classloss30_pool4"
    assert name("--gan-weight", "10", "--dis-l-weight", "0.01", "--amp") == "galaxy_vae_conv_amp_gan10_disl0.01"
    assert name("--experiment", "classifier", "--amp", "--gan-weight", "0") == "galaxy_classifier_amp"
    # the judge: its own default epochs (60, unnamed), none of the VAE's knobs
    assert name("--experiment", "classifier", "--amp") == "galaxy_classifier_amp"
    assert name("--experiment", "classifier", "--epochs", "60", "--latent-dim", "7", "--lr", "3e-3") == "galaxy_classifier_lr0.003"
    assert gv.comparison_name(vars(gv.parse_args(["--arch", "resnet", "--epochs", "30", "--amp"]))) == "galaxy_vae_amp"


def test_replot_redraws_the_loss_figure_from_the_metrics_alone(galaxies, tmp_path):
    """For a run whose weights are not kept (the mlp, the resnet): --replot <run>_metrics.json
    draws its loss figure byte for byte as the run drew it, reading no image and no weights."""
    root, _ = galaxies
    gv.main(args_for(root, tmp_path / "a", "--arch", "mlp", "--latent-dim", "4", "--epochs", "2"))
    (metrics,) = (tmp_path / "a").glob("*_metrics.json")
    run = metrics.name.removesuffix("_metrics.json")
    gv.main(["--replot", str(metrics), "--out-dir", str(tmp_path / "b"),
             "--images-dir", str(tmp_path / "no_images_here"), *DEVICE_FLAGS])
    assert [p.name for p in (tmp_path / "b").iterdir()] == [f"{run}_loss.png"]
    assert (tmp_path / "b" / f"{run}_loss.png").read_bytes() == (tmp_path / "a" / f"{run}_loss.png").read_bytes()


@pytest.mark.slow
def test_resume_continues_where_the_run_stopped(galaxies, tmp_path, monkeypatch):
    root, _ = galaxies
    flags = args_for(root, tmp_path, "--arch", "mlp", "--latent-dim", "4", "--batch-size", "16", "--epochs", "2")
    real_train_epoch = gv.train_epoch

    def killed_in_epoch_2(*args):
        if args[4] == 2:  # train_epoch(model, optimizer, data, args, epoch, generator)
            raise KeyboardInterrupt
        return real_train_epoch(*args)

    monkeypatch.setattr(gv, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        gv.main(flags)
    monkeypatch.undo()
    gv.main(flags + ["--resume"])
    resumed = json.loads((tmp_path / "galaxy_vae_mlp_e2_bs16_size32_z4_metrics.json").read_text())
    gv.main(args_for(root, tmp_path / "straight", "--arch", "mlp", "--latent-dim", "4",
                     "--batch-size", "16", "--epochs", "2"))
    straight = json.loads((tmp_path / "straight" / "galaxy_vae_mlp_e2_bs16_size32_z4_metrics.json").read_text())
    assert [r["test_bce"] for r in resumed["history"]] == [r["test_bce"] for r in straight["history"]]


@pytest.mark.slow
def test_unsupervised_skips_the_class_figures_and_the_overlay_needs_all_three(galaxies, tmp_path, capsys):
    root, _ = galaxies
    for arch in gv.ARCHS:
        gv.main(args_for(root, tmp_path, "--arch", arch, "--latent-dim", "3", "--epochs", "1",
                         "--batch-size", "24"))
        # named after the knobs the three share but the architecture (and the epochs)
        assert (tmp_path / "galaxy_vae_bs24_size32_z3_architectures.png").exists() == (arch == gv.ARCHS[-1])
    assert "the class figures (class samples, latent colours) are skipped" in capsys.readouterr().out
    assert not (tmp_path / "galaxy_vae_conv_e1_bs24_size32_z3_latent.png").exists()
    assert (tmp_path / "galaxy_vae_conv_e1_bs24_size32_z3_loss.png").exists()


def test_load_refuses_other_classes_for_a_conditional_model(galaxies, tmp_path):
    root, ids = galaxies
    gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", "--conditional",
                     "--latent-dim", "3", "--epochs", "1"))
    relabelled = tmp_path / "other_labels.csv"
    relabelled.write_text("GalaxyID,kind\n" + "\n".join(f"{g},{'a' if i % 2 else 'b'}" for i, g in enumerate(ids)))
    result = run_script("galaxy_vae.py", *args_for(root, tmp_path, "--labels", relabelled,
                                                   "--load", tmp_path / "galaxy_vae_conv_cond_e1_size32_z3.pt"))
    assert_one_line_error(result, "was conditioned on the classes ['other', 'spiral_odd']")


def real_galaxies(tmp, n):
    """The first n of the real JPEGs with the real labels.csv, read as galaxy_vae.py reads them
    (64x64, the default crop): (data, classes); skipped without ../shared/data."""
    real = SHARED_DATA / "galaxy"
    if not (real / "images_training_rev1").is_dir():
        pytest.skip(f"real galaxy images not found at {real}")
    folder = tmp / "images_training_rev1"
    folder.mkdir()
    for path in sorted((real / "images_training_rev1").glob("*.jpg"))[:n]:
        shutil.copy(path, folder)
    return load(gv.parse_args(["--images-dir", str(folder), "--labels", str(real / "labels.csv"),
                               "--cache-dir", str(tmp / "cache"), "--workers", "2"]))


def test_real_galaxy_images(tmp_path, capsys):
    """120 of the real JPEGs with the real labels.csv: decoded, matched and reported."""
    data, classes = real_galaxies(tmp_path, 120)
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
    data, _ = load(parse(root, tmp_path, "--labels", root / "labels.csv"))
    train, test = common.split_galaxies(data, 0.3, 0, None, "cpu")
    means = [gv.latent_means(Pixels(), part) for part in (train, test)]
    assert gv.latent_probe(*means, train["y"], test["y"], 2)["latent_probe_test_balanced_accuracy"] == 1.0
    shuffled = [part["y"][torch.randperm(len(part["y"]), generator=torch.Generator().manual_seed(1))]
                for part in (train, test)]
    assert gv.latent_probe(*means, *shuffled, 2)["latent_probe_test_balanced_accuracy"] < 0.8


def test_active_dims_counts_the_dimensions_whose_mean_varies(galaxies, tmp_path):
    class Encoder(torch.nn.Module):
        cond_dim = 0

        def encode(self, x, c=None):  # dims 0-1 follow the image, dim 2 barely moves, dim 3 is constant
            colour = x.mean((2, 3))
            mu = torch.stack([colour[:, 0] * 10, colour[:, 2] * 10, colour[:, 1] * 1e-3, torch.zeros(len(x))], 1)
            return mu, torch.zeros_like(mu)

    root, _ = galaxies
    data, _ = load(parse(root, tmp_path))
    assert gv.active_dims(gv.latent_means(Encoder(), data)) == 2


def test_an_unknown_sample_class_stops_before_training(galaxies, tmp_path):
    root, _ = galaxies
    result = run_script("galaxy_vae.py", *args_for(root, tmp_path, "--labels", root / "labels.csv",
                                                   "--sample-class", "barred", "--epochs", "1"))
    assert_one_line_error(result, "--sample-class 'barred' is not one of ['other', 'spiral_odd']")
    assert not list(tmp_path.glob("*.pt"))


# --- figures ------------------------------------------------------------------------------------
def two_classes(n=24, size=32, cond_dim=2):
    """n uint8 images alternating between two classes, one-hot conditions, and the classes."""
    y = torch.arange(n) % 2
    data = {"x": torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0)),
            "y": y, "c": torch.eye(cond_dim)[y]}
    return data, {"names": ["other", "spiral_odd"], "counts": [n // 2, n // 2], "conditions": torch.eye(cond_dim)}


def figure_of(function, monkeypatch, *args):
    """The matplotlib figure `function` draws, kept open instead of written."""
    drawn = []
    monkeypatch.setattr(common, "save_figure", lambda fig, path: drawn.append(fig))
    function(*args)
    return drawn[0]


@pytest.mark.parametrize("class_loss", [False, True])
def test_the_loss_figure_plots_the_class_loss_and_the_helper_when_they_were_trained(class_loss, tmp_path,
                                                                                   monkeypatch):
    """BCE above its floor, MSE and KL for every run; a run trained with --class-loss-weight also
    shows the term its conditional result rests on (the helper's cross-entropy on generated
    galaxies) and the helper's own on real ones, as recorded in the history."""
    terms = ("bce", "mse", "kl") + (("class", "helper") if class_loss else ())
    history = [{"iteration": 10 * i, **{f"train_{k}": 1.0 / i for k in terms},
                **{f"test_{k}": 1.5 / i for k in ("bce", "mse", "kl")}} for i in (1, 2, 3)]
    final = {"train_bce_floor": 0.1, "test_bce_floor": 0.1}
    args = gv.parse_args(["--out-dir", str(tmp_path)])
    fig = figure_of(gv.loss_figure, monkeypatch, history, final, "run", args)
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len(axes) == (4 if class_loss else 3)
    if class_loss:
        lines = {line.get_label(): list(line.get_ydata()) for line in axes[3].get_lines()}
        (generated,) = [label for label in lines if label.startswith("class loss")]
        (helper,) = [label for label in lines if label.startswith("the helper on the real")]
        assert lines[generated] == [r["train_class"] for r in history]
        assert lines[helper] == [r["train_helper"] for r in history]


@pytest.mark.parametrize("conditional", [False, True])
def test_class_figure_shows_every_class_and_calls_its_rows_what_they_are(conditional, tmp_path, monkeypatch):
    """A block per class (--sample-class first): originals, reconstructions and, conditional,
    prior draws decoded given that class; unconditional, no per-class "generated" row (a draw of
    q(z|x) is a reconstruction) but one unlabelled block of prior draws at the end."""
    data, classes = two_classes()
    model = gv.GalaxyVAE("conv", latent_dim=3, size=32, cond_dim=2 if conditional else 0)
    args = gv.parse_args(["--image-size", "32", "--latent-dim", "3", "--out-dir", str(tmp_path),
                          "--sample-class", "spiral_odd"])
    shown, asked = {}, []
    monkeypatch.setattr(common, "plot_image_rows", lambda path, rows, title: shown.update(rows))
    condition = gv.class_condition
    monkeypatch.setattr(gv, "class_condition",
                        lambda cl, k, n, device: asked.append(k) or condition(cl, k, n, device))
    gv.class_figures(model, data, classes, args, "run", torch.Generator().manual_seed(0))
    labels = list(shown)
    per_class = 3 if conditional else 2
    for i, cls in enumerate(["spiral_odd", "other"]):  # the --sample-class first
        block = labels[i * per_class:(i + 1) * per_class]
        assert all(label.startswith(f"{cls}:") for label in block), labels
        assert "originals" in block[0] and "reconstructions" in block[1]
        of_class = data["x"][data["y"] == classes["names"].index(cls)]
        assert torch.equal(shown[block[0]], of_class[:gv.N_SHOWN] / 255.0)
    assert not any("q(z|x)" in label for label in labels)
    if conditional:
        assert asked == [1, 0]
        assert "given spiral_odd" in labels[2] and "given other" in labels[5]
    else:
        assert len(labels) == 5 and "unconditional" in labels[-1] and asked == []
    assert all(images.shape == (gv.N_SHOWN, 3, 32, 32) for images in shown.values())


@pytest.mark.parametrize("conditional", [False, True])
def test_sample_figure_decodes_the_same_z_under_every_class(conditional, tmp_path, monkeypatch):
    """Conditional: a block per class, the same N_SHOWN draws z under each class's condition;
    unconditional: 3·N_SHOWN prior draws, N_SHOWN to a row."""
    _, classes = two_classes()
    model = gv.GalaxyVAE("conv", latent_dim=3, size=32, cond_dim=2 if conditional else 0)
    args = gv.parse_args(["--image-size", "32", "--latent-dim", "3", "--out-dir", str(tmp_path)])
    shown = {}
    monkeypatch.setattr(common, "plot_image_rows", lambda path, rows, title, nrow: shown.update(rows, nrow=nrow))
    gv.sample_figure(model, classes if conditional else None, args, "run", "cpu", torch.Generator().manual_seed(0))
    if conditional:
        z = torch.randn(gv.N_SHOWN, 3, generator=torch.Generator().manual_seed(0))
        for k, cls in enumerate(classes["names"]):
            assert torch.equal(shown[cls], gv.decode(model, z, gv.class_condition(classes, k, gv.N_SHOWN, "cpu")))
        assert shown["nrow"] == gv.N_SHOWN // 2
    else:
        assert shown["z ~ N(0, I)"].shape == (3 * gv.N_SHOWN, 3, 32, 32) and shown["nrow"] == gv.N_SHOWN


def test_weight_tiles_are_each_on_their_own_scale_around_zero():
    """Each tile stretched to its own largest |w|: 0 is mid grey, that tile's ±max full colour, so
    a filter of small weights shows its pattern as clearly as one of large weights."""
    tiles = torch.zeros(2, 3, 4, 4)
    tiles[0, 0, 0, 0], tiles[0, 1, 0, 0], tiles[1, 2, 3, 3], tiles[1, 0, 0, 0] = 2.0, -2.0, 0.2, -0.1
    shown, (low, high) = gv.own_scale(tiles, side=32)
    assert (low, high) == pytest.approx((0.2, 2.0)) and shown.shape == (2, 3, 32, 32)  # 4x4 enlarged 8x
    assert shown[0, 0, :8, :8].eq(1.0).all() and shown[0, 1, :8, :8].eq(0.0).all()
    assert shown[1, 2, -1, -1].item() == pytest.approx(1.0) and shown[1, 0, 0, 0].item() == pytest.approx(0.25)
    assert shown[1, 1].eq(0.5).all()
    smooth = torch.linspace(-1, 1, 64).expand(16, 3, 64, 64)
    assert gv.neighbour_correlation(smooth) > 0.99
    noise = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert abs(gv.neighbour_correlation(noise)) < 0.05


@pytest.mark.parametrize("arch, patch", [("mlp", 32), ("conv", 10), ("resnet", 7)])
def test_the_second_layer_on_the_image_is_the_linearised_response_to_each_pixel(arch, patch):
    """second_layer_tiles against autograd: a second-layer unit's response to the image through
    the first two layers with the non-linearity, the biases and the BatchNorm shift left out (the
    BatchNorm scale kept, with random running statistics), differentiated with respect to the
    pixels; for conv and resnet the unit at the top-left output position, whose receptive field is
    the top-left patch x patch pixels."""
    torch.manual_seed(0)
    model = gv.GalaxyVAE(arch, latent_dim=3, size=32)
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
    tiles = gv.second_layer_tiles(model.encoder, 32)
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    if arch == "mlp":
        first, second = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][:2]
        response = F.linear(F.linear(x.flatten(1), first.weight), second.weight)[0]
        expected = torch.stack([torch.autograd.grad(response[o], x, retain_graph=True)[0][0] for o in range(5)])
        assert tiles.shape == (512, 3, 32, 32)
    else:
        first, second = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)][:2]
        scale = norms[0].weight / torch.sqrt(norms[0].running_var + norms[0].eps)
        hidden = F.conv2d(x, first.weight, stride=first.stride, padding=first.padding) * scale[None, :, None, None]
        response = F.conv2d(hidden, second.weight, stride=second.stride)[0, :, 0, 0]  # no padding: a full field
        expected = torch.stack([torch.autograd.grad(response[o], x, retain_graph=True)[0][0] for o in range(5)])
        pad = first.padding[0]  # the first layer's padding shifts the field by that many pixels
        expected = expected[:, :, :patch - pad, :patch - pad]
        tiles = tiles[:, :, pad:, pad:]
    assert torch.allclose(tiles[:5], expected[:, :, :tiles.shape[2], :tiles.shape[3]], atol=1e-5)


@pytest.mark.parametrize("arch, tiles", [("mlp", (512, 3, 32, 32)), ("conv", (32, 3, 4, 4)),
                                         ("resnet", (32, 3, 3, 3))])
def test_weight_figure_shows_the_layers_that_touch_the_image(arch, tiles, tmp_path, monkeypatch):
    """Encoder's first and decoder's last layer as RGB tiles, and the encoder's second layer seen
    on the image between them: three panels, no wider than 3x tall."""
    model = gv.GalaxyVAE(arch, latent_dim=3, size=32)
    weighted = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    first = [m for m in model.encoder.modules() if isinstance(m, weighted)][0]
    last = [m for m in model.decoder.modules() if isinstance(m, weighted)][-1]
    assert gv.rgb_tiles(first, 32).shape == tiles and gv.rgb_tiles(last, 32).shape == tiles
    args = gv.parse_args(["--arch", arch, "--image-size", "32", "--latent-dim", "3", "--out-dir", str(tmp_path)])
    fig = figure_of(gv.weight_figure, monkeypatch, model, args, "run")
    width, height = fig.get_size_inches()
    assert len(fig.axes) == 3 and width <= 3 * height
    assert "second layer" in fig.axes[1].get_title()
    assert all("Neighbouring weights correlate" in ax.get_xlabel() for ax in fig.axes)


def test_architectures_figure_one_colour_per_architecture_dashed_test(tmp_path, monkeypatch):
    settings = vars(gv.parse_args([]))
    for i, arch in enumerate(gv.ARCHS):
        history = [{"iteration": t, "train_bce": 3000 + 500 / t + i, "test_bce": 3000 + 600 / t + i}
                   for t in (1, 2, 3)]
        metrics = {"args": dict(settings, arch=arch), "history": history,
                   "final": {"epochs_trained": 3, "train_bce_floor": 2900, "test_bce_floor": 2900}}
        (tmp_path / f"galaxy_vae_{arch}_metrics.json").write_text(json.dumps(metrics))
    fig = figure_of(gv.architectures_figure, monkeypatch, tmp_path, settings)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    for arch in gv.ARCHS:
        train, test = lines[f"{arch}, train"], lines[f"{arch}, test"]
        assert train.get_color() == test.get_color()
        assert (train.get_linestyle(), test.get_linestyle()) == ("-", "--")
    assert len({lines[f"{arch}, train"].get_color() for arch in gv.ARCHS}) == 3


# --- the training step against a hand-written step on its objective ---------------------------
# Tiny models (32x32 images, 3 latent dimensions) and a batch of 4 that is the whole data, so
# train_epoch takes exactly one step. --kl-weight is 0.3, not the default 1: a step that ignores
# it fails. The draws follow train_epoch's order on its generator: the shuffle (randperm), then
# the reparameterisation noise (randn of μ's shape).
KL_WEIGHT, LATENT, SIZE, BATCH, COND_DIM = 0.3, 3, 32, 4, 4


def step_args(*extra):
    return gv.parse_args(["--image-size", str(SIZE), "--latent-dim", str(LATENT), "--batch-size",
                          str(BATCH), "--kl-weight", str(KL_WEIGHT), *map(str, extra)])


def tiny_data(n=BATCH, conditional=False, seed=0):
    """n random uint8 images holding both 0 and 255, and (conditional) n distinct one-hot
    conditions, so a condition paired with another image's picture changes the loss."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0, 255
    c = torch.eye(COND_DIM)[torch.randperm(n, generator=generator) % COND_DIM] if conditional else None
    return {"x": x, "y": torch.zeros(n, dtype=torch.long), "c": c}


def objective_by_hand(model, images, cond, eps, kl_weight):
    """The module docstring's loss built from the network's raw parts (encoder trunk, the two
    linear heads, decoder), not through GalaxyVAE.forward/encode/decode nor vae_loss: the
    condition concatenated to the encoder's features and to z (Sohn et al.), z = μ + σ·ε, BCE
    written with F.logsigmoid and summed over pixels, the KL from torch.distributions, the sum
    bce + kl_weight·kl averaged over the batch."""
    features = model.encoder(images)
    if cond is not None:
        features = torch.cat([features, cond], 1)
    mu, logvar = model.to_mu(features), model.to_logvar(features)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = decode_by_hand(model, z, cond)
    bce = -(images * F.logsigmoid(logits) + (1 - images) * F.logsigmoid(-logits)).flatten(1).sum(1)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl = torch.distributions.kl_divergence(q, prior).sum(1)
    mse = (torch.sigmoid(logits) - images).pow(2).flatten(1).mean(1)
    return {"bce": bce, "kl": kl, "mse": mse, "loss": (bce + kl_weight * kl).mean()}


def decode_by_hand(model, z, cond):
    """The decoder's layers in turn, given [z, c], with FiLM (Perez et al.) written out after each
    hidden layer that has one: h·(1 + γ) + β, γ and β a linear map of c."""
    h = torch.cat([z, cond], 1) if cond is not None else z
    for i, layer in enumerate(model.decoder):
        h = layer(h)
        if str(i) in model.film:
            linear = model.film[str(i)].to_gamma_beta
            gamma, beta = (cond @ linear.weight.T + linear.bias).split(h.shape[1], dim=1)
            shape = (len(h), h.shape[1]) + (1,) * (h.dim() - 2)
            h = h * (1 + gamma.reshape(shape)) + beta.reshape(shape)
    return h


def away_from_the_prior(model):
    """μ's bias set to 3: the KL term is then about ½·3²·3 ≈ 13.5 nats per image instead of ~0 at
    initialisation, so a wrong KL weight moves the totals (BCE ≈ 2,000 nats) beyond float noise."""
    with torch.no_grad():
        model.to_mu.bias.fill_(3.0)
    return model


def close(a, b, rtol=1e-4):
    """Equal up to float32 summation order: relative to the largest entry of b."""
    return torch.allclose(a, b, rtol=rtol, atol=rtol * b.abs().max().item() + 1e-12)


def with_random_film(model):
    """FiLM starts as the identity (zeros); random weights make a FiLM that is skipped, applied
    to the wrong layer or with γ and β swapped change the step."""
    with torch.no_grad():
        for film in model.film.values():
            film.to_gamma_beta.weight.normal_(0, 0.3)
            film.to_gamma_beta.bias.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("arch, conditional, condition", [
    ("mlp", False, "concat"), ("conv", False, "concat"), ("resnet", False, "concat"),
    ("conv", True, "concat"), ("mlp", True, "concat"), ("conv", True, "film"), ("resnet", True, "film"),
    ("mlp", True, "film")])
def test_one_training_step_descends_the_documented_loss(arch, conditional, condition):
    """train_epoch on one batch of 4 equals an SGD step on the docstring's objective written by
    hand (objective_by_hand): the same gradient on every parameter, the parameters moved by
    -lr·gradient, and the logged bce/kl/mse the batch means of those terms. Catches an ignored
    --kl-weight, a summed or per-pixel-averaged loss, images not scaled to [0, 1] (as input or as
    BCE target), a condition missing from encoder or decoder or not the image's own (the batch
    is shuffled and every image has its own condition), and training in eval mode (BatchNorm
    uses the batch's statistics in training: the model is handed over in eval mode)."""
    cond_flags = ["--conditional", "--labels", "labels.csv", "--condition", condition] if conditional else []
    args = step_args("--arch", arch, *cond_flags)
    torch.manual_seed(0)
    model = gv.GalaxyVAE(arch, LATENT, SIZE, COND_DIM if conditional else 0, condition=condition)
    model = with_random_film(away_from_the_prior(model))
    assert len(model.film) == (len(gv.CHANNELS) if arch != "mlp" else gv.MLP_LAYERS) * (condition == "film")
    reference = copy.deepcopy(model).train()
    data = tiny_data(conditional=conditional)

    draws = torch.Generator().manual_seed(5)
    order = torch.randperm(BATCH, generator=draws)
    eps = torch.randn(BATCH, LATENT, generator=draws)
    assert not torch.equal(order, torch.arange(BATCH))  # the shuffle matters to the pairing
    images = data["x"][order].float() / 255
    expected = objective_by_hand(reference, images, data["c"][order] if conditional else None, eps, KL_WEIGHT)
    gradients = torch.autograd.grad(expected["loss"], list(reference.parameters()))

    lr = 0.1
    before = [p.detach().clone() for p in model.parameters()]
    model.eval()  # train_epoch must switch to training mode itself
    logged = gv.train_epoch(model, torch.optim.SGD(model.parameters(), lr=lr), data, args, 1,
                            torch.Generator().manual_seed(5))
    for (name, param), old, gradient in zip(model.named_parameters(), before, gradients):
        assert close(param.grad, gradient), name
        assert close(param.detach(), old - lr * gradient, rtol=1e-5), name
    for term in ("bce", "kl", "mse"):
        assert logged[term].shape == (1,) and close(logged[term], expected[term].mean().detach().view(1), 1e-5), term


def pool_by_hand(images, k):
    """k x k average pooling written as a reshape and a mean (B, C, S, S) -> (B, C, S/k, S/k)."""
    b, c, s, _ = images.shape
    return images.reshape(b, c, s // k, k, s // k, k).mean((3, 5))


@pytest.mark.parametrize("pool", [1, 2])
def test_the_class_loss_step_adds_the_helpers_cross_entropy_on_prior_samples_and_trains_the_helper(pool):
    """--class-loss-weight 7 (FiLM, conv): the VAE's gradient is that of the ELBO plus 7 x the
    cross-entropy of the helper (in eval mode) on sigmoid(decoder) of prior samples z ~ N(0, I)
    given uniformly drawn classes, against those classes — written by hand (decode_by_hand,
    log_softmax + gather); the helper's own update is an SGD step on the class-weighted
    cross-entropy of the real batch's symmetries (recorded at its input), so a class term that
    leaked into the helper's weights, an unweighted or unaugmented helper loss, or an ignored
    weight fails; with --helper-pool 2 the helper sees both at half the side. Draw order on the
    generator: shuffle, ε, the asked classes, the prior z, then the helper's symmetries."""
    args = step_args("--arch", "conv", "--conditional", "--labels", "labels.csv", "--condition", "film",
                     "--class-loss-weight", "7", "--helper-pool", pool)
    torch.manual_seed(0)
    model = with_random_film(away_from_the_prior(gv.GalaxyVAE("conv", LATENT, SIZE, COND_DIM, condition="film")))
    helper = gv.GalaxyClassifier(COND_DIM)
    reference, helper_reference = copy.deepcopy(model).train(), copy.deepcopy(helper)
    data = tiny_data(conditional=True)
    data["y"] = data["c"].argmax(1)
    data["conditions"], data["class_weights"] = torch.eye(COND_DIM), torch.tensor([0.5, 1.0, 2.0, 4.0])

    draws = torch.Generator().manual_seed(5)
    order = torch.randperm(BATCH, generator=draws)
    eps = torch.randn(BATCH, LATENT, generator=draws)
    asked = torch.randint(COND_DIM, (BATCH,), generator=draws)
    z = torch.randn(BATCH, LATENT, generator=draws)
    images = data["x"][order].float() / 255
    elbo = objective_by_hand(reference, images, data["c"][order], eps, KL_WEIGHT)["loss"]
    generated = pool_by_hand(torch.sigmoid(decode_by_hand(reference, z, torch.eye(COND_DIM)[asked])), pool)
    log_p = torch.log_softmax(helper_reference.eval()(generated), 1).gather(1, asked[:, None]).squeeze(1)
    gradients = torch.autograd.grad(elbo + 7 * -log_p.mean(), list(reference.parameters()))

    seen = []
    helper.register_forward_pre_hook(lambda m, x: seen.append(x[0].detach().clone()) if m.training else None)
    helper.optimizer = torch.optim.SGD(helper.parameters(), lr=0.05)
    logged = gv.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, args, 1,
                            torch.Generator().manual_seed(5), helper)
    for (name, param), gradient in zip(model.named_parameters(), gradients):
        assert close(param.grad, gradient), name
    assert close(logged["class"], -log_p.mean().detach().view(1), 1e-5)

    (real,) = seen  # the helper's own step saw each real image under one of the eight symmetries
    symmetries = lambda x: [torch.rot90(m, k, dims=(1, 2)) for m in (x, x.flip(2)) for k in range(4)]
    assert all(any(torch.allclose(r, s, atol=1e-6) for s in symmetries(x)) for r, x in zip(real, pool_by_hand(images, pool)))
    assert any(not torch.allclose(r, x, atol=1e-6) for r, x in zip(real, pool_by_hand(images, pool)))  # not all as they were
    labels, weights = data["y"][order], data["class_weights"]
    log_q = torch.log_softmax(helper_reference.train()(real), 1).gather(1, labels[:, None]).squeeze(1)
    helper_loss = -(weights[labels] * log_q).sum() / weights[labels].sum()
    helper_gradients = torch.autograd.grad(helper_loss, list(helper_reference.parameters()))
    for (name, param), old, gradient in zip(helper.named_parameters(), helper_reference.parameters(), helper_gradients):
        assert close(param.detach(), old.detach() - 0.05 * gradient, rtol=1e-5), name
    assert close(logged["helper"], helper_loss.detach().view(1), 1e-5)


def test_images_reach_the_encoder_as_floats_in_0_1_in_training_evaluation_and_the_metrics():
    """A forward pre-hook on the encoder records what it is given inside train_epoch, evaluate
    (whose μ feeds active_dims and latent_probe) and latent_means (the latent figure): each time the uint8 images
    divided by 255, float32, spanning [0, 1] (the data hold 0 and 255), never raw bytes or
    another scaling on one of the paths."""
    args = step_args("--arch", "mlp")
    model = gv.GalaxyVAE("mlp", LATENT, SIZE)
    data = tiny_data()
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    gv.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), data, args, 1,
                   torch.Generator().manual_seed(5))
    gv.evaluate(model, data, args)
    gv.latent_means(model, data)
    order = torch.randperm(BATCH, generator=torch.Generator().manual_seed(5))
    scaled = data["x"].double() / 255
    assert len(seen) == 3
    for given, expected in zip(seen, (scaled[order], scaled, scaled)):
        assert given.dtype == torch.float32 and given.min() == 0 and given.max() == 1
        assert torch.allclose(given.double(), expected, atol=1e-7)


def test_evaluate_averages_the_documented_terms_per_image_in_eval_mode():
    """evaluate over 6 images in batches of 4 and 2 equals the hand-written terms (eval mode:
    BatchNorm's running statistics; z drawn from a generator seeded with --seed, batch by batch)
    summed over the split and divided by its size; loss = bce + 0.3·kl."""
    args = step_args("--arch", "conv", "--seed", "7")
    torch.manual_seed(0)
    model = away_from_the_prior(gv.GalaxyVAE("conv", LATENT, SIZE))
    reference = copy.deepcopy(model).eval()
    data = tiny_data(n=6)
    draws = torch.Generator().manual_seed(7)
    sums = {"bce": 0.0, "kl": 0.0, "mse": 0.0}
    with torch.no_grad():
        for idx in (torch.arange(0, 4), torch.arange(4, 6)):
            terms = objective_by_hand(reference, data["x"][idx].float() / 255, None,
                                      torch.randn(len(idx), LATENT, generator=draws), KL_WEIGHT)
            sums = {k: v + terms[k].sum().item() for k, v in sums.items()}
    expected = {k: v / 6 for k, v in sums.items()}
    expected["loss"] = expected["bce"] + KL_WEIGHT * expected["kl"]
    model.train()  # evaluate must switch to eval mode itself
    measured, means = gv.evaluate(model, data, args, batch_size=4)
    assert torch.equal(means, gv.latent_means(model, data))  # μ of each image, in order
    assert measured.keys() == expected.keys()
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, rel=1e-5), key
    assert measured["loss"] - measured["bce"] == pytest.approx(KL_WEIGHT * expected["kl"], rel=1e-3)


def test_fit_trains_with_adam_at_a_constant_given_lr(tmp_path, monkeypatch):
    """The optimizer fit hands to train_epoch, read at every epoch: Adam over every parameter of
    the model in one group, at --lr 3e-4 (not the default 1e-3) in both epochs, with PyTorch's
    default betas, eps, no weight decay, no amsgrad (the docstring: Adam at a constant --lr)."""
    args = step_args("--arch", "mlp", "--lr", "3e-4", "--epochs", "2", "--out-dir", tmp_path)
    model = gv.GalaxyVAE("mlp", LATENT, SIZE)
    handed, real_train_epoch = [], gv.train_epoch

    def recording_train_epoch(model, optimizer, *rest):
        handed.append((optimizer, [dict(g) for g in optimizer.param_groups]))
        return real_train_epoch(model, optimizer, *rest)

    monkeypatch.setattr(gv, "train_epoch", recording_train_epoch)
    gv.fit(model, tiny_data(), tiny_data(seed=1), args, tmp_path / "run", torch.Generator().manual_seed(0), None)
    assert len(handed) == 2 and handed[0][0] is handed[1][0]
    optimizer = handed[0][0]
    assert type(optimizer) is torch.optim.Adam
    for _, groups in handed:
        (group,) = groups
        assert group["lr"] == 3e-4 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
        assert group["weight_decay"] == 0 and not group["amsgrad"]
        assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("amp", [False, True])
def test_amp_runs_the_forward_pass_in_bfloat16_and_the_loss_in_float32(amp, monkeypatch):
    """--amp: the first encoder layer computes in bfloat16 inside train_epoch (float32 without);
    the loss that is back-propagated stays float32 and the weights' gradients float32."""
    args = step_args("--arch", "mlp", *(["--amp"] if amp else []))
    model = gv.GalaxyVAE("mlp", LATENT, SIZE)
    first_linear = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    dtypes, losses, real_loss = [], [], gv.vae_loss
    first_linear.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    monkeypatch.setattr(gv, "vae_loss", lambda *a: losses.append(real_loss(*a)) or losses[-1])
    gv.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), tiny_data(), args, 1,
                   torch.Generator().manual_seed(5))
    assert dtypes == [torch.bfloat16 if amp else torch.float32]
    assert losses[0]["loss"].dtype == torch.float32
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_split_holds_out_the_test_fraction_of_each_class_by_seed_and_limit_keeps_the_first():
    """split on 40 galaxies (30 of class 0, 10 of class 1, interleaved), --test-fraction 0.3:
    round(0.3·n) of each class held out, no galaxy in both parts, images, classes and conditions
    kept with their galaxy; the seed picks the test set (same seed, same set; another seed,
    another set); --limit 5 keeps the first 5 of each part of the unlimited split, so a limited
    run never tests on a galaxy that the full run trains on."""
    y = torch.tensor([1 if i % 4 == 0 else 0 for i in range(40)])
    data = {"x": torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 2, 2).clone(),
            "y": y, "c": F.one_hot(y, 2).float(), "ids": [f"g{i}" for i in range(40)]}
    train, test = common.split_galaxies(data, 0.3, 3, None, "cpu")
    assert not set(train["ids"]) & set(test["ids"]) and len(train["ids"]) + len(test["ids"]) == 40
    assert torch.bincount(test["y"], minlength=2).tolist() == [9, 3]
    for part in (train, test):
        index = torch.tensor([int(g[1:]) for g in part["ids"]])
        assert torch.equal(part["x"][:, 0, 0, 0].long(), index) and torch.equal(part["y"], y[index])
        assert torch.equal(part["c"], F.one_hot(y[index], 2).float())
    assert common.split_galaxies(data, 0.3, 3, None, "cpu")[1]["ids"] == test["ids"]
    assert common.split_galaxies(data, 0.3, 4, None, "cpu")[1]["ids"] != test["ids"]
    limited_train, limited_test = common.split_galaxies(data, 0.3, 3, 5, "cpu")
    assert limited_train["ids"] == train["ids"][:5] and limited_test["ids"] == test["ids"][:5]


def test_main_splits_with_the_given_test_fraction_seed_and_limit(galaxies, tmp_path, monkeypatch):
    """main hands --test-fraction, --seed and --limit to common.split_galaxies (stopped there: no training)."""
    root, _ = galaxies
    calls = []

    class Stop(Exception):
        pass

    def recording_split(data, fraction, seed, limit, device):
        calls.append((fraction, seed, limit))
        raise Stop

    monkeypatch.setattr(common, "split_galaxies", recording_split)
    with pytest.raises(Stop):
        gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", "--test-fraction", "0.3",
                         "--seed", "4", "--limit", "7"))
    assert calls == [(0.3, 4, 7)]


def test_active_dims_against_the_variance_of_mu_computed_by_hand():
    """active_dims of a conv model whose first three μ dimensions are made constant (zero weights),
    the next two made to vary (weights scaled up 1000 times: variance about 0.3) and the last
    one to vary a little (50 times: variance about 0.002, above 0.01 as a standard deviation but
    not as a variance): the count of Var_x[μ_j] > 0.01 with μ computed by hand from the
    eval-mode trunk on the scaled images, which is 2."""
    torch.manual_seed(0)
    model = gv.GalaxyVAE("conv", 6, SIZE)
    with torch.no_grad():
        model.to_mu.weight[:3] = 0
        model.to_mu.weight[3:5] *= 1000
        model.to_mu.weight[5] *= 50
    reference = copy.deepcopy(model).eval()
    data = tiny_data(n=8)
    with torch.no_grad():
        mu = reference.to_mu(reference.encoder(data["x"].float() / 255))
    expected = int((mu.var(0) > 0.01).sum())
    model.train()
    assert gv.active_dims(gv.latent_means(model, data)) == expected == 2
    assert 1e-4 < mu.var(0)[5] < 1e-2  # the dimension that only a standard deviation would count


def test_latent_probe_weights_the_classes_and_scores_accuracy_and_balanced_accuracy():
    """A stand-in encoder whose μ is the image's mean colour, each image all black or all white,
    so μ takes two values. Training: 40 black of class 0; 15 white of class 0 and 10 white of
    class 1. Two points, two parameters: the fitted logits at each point follow the weighted
    class counts there. Class-weighted (n / (K·n_k): 65/110 and 65/20) white means class 1
    (15·0.59 < 10·3.25); unweighted it would be class 0 (15 > 10). Test: 8 black and 2 white of
    class 0, 4 white of class 1 → predictions 0 for black, 1 for white: accuracy 12/14,
    balanced accuracy (8/10 + 4/4)/2 = 0.9."""
    def part(black0, white0, white1):
        x = torch.zeros(black0 + white0 + white1, 3, 2, 2, dtype=torch.uint8)
        x[black0:] = 255
        return {"x": x, "c": None, "y": torch.tensor([0] * (black0 + white0) + [1] * white1)}

    train, test = part(40, 15, 10), part(8, 2, 4)
    probe = gv.latent_probe(gv.latent_means(Pixels(), train), gv.latent_means(Pixels(), test), train["y"], test["y"], 2)
    assert probe["latent_probe_test_accuracy"] == pytest.approx(12 / 14)
    assert probe["latent_probe_test_balanced_accuracy"] == pytest.approx(0.9)


# --- the Fréchet distance of galaxies and where its samples come from ----------------------------
class PriorRecorder(torch.nn.Module):
    """A stand-in VAE that records every z it decodes (and the condition), and paints the image
    from z's first three entries, so the distance has something to measure."""

    def __init__(self, latent=8, cond_dim=0, size=16):
        super().__init__()
        self.to_mu, self.cond_dim, self.size, self.seen = torch.nn.Linear(1, latent), cond_dim, size, []

    def decode(self, z, c=None):
        self.seen.append((z.detach().clone(), None if c is None else c.detach().clone()))
        return z[:, :3, None, None].expand(-1, -1, self.size, self.size).contiguous()

    def encode(self, x, c=None):
        mu = torch.zeros(len(x), self.to_mu.out_features)
        mu[:, :3] = torch.logit(x.mean((2, 3)).clamp(1e-3, 1 - 1e-3))  # decodes back to the mean colour
        return mu, torch.zeros_like(mu)


def two_class_galaxies(n, size=16, seed=0):
    """n uint8 images of two classes (every third image class 1), conditions one-hot."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.tensor([int(i % 3 == 0) for i in range(n)])
    x = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    return {"x": x, "y": y, "c": F.one_hot(y, 2).float()}


@pytest.mark.parametrize("conditional", [False, True])
def test_every_generated_galaxy_that_is_scored_is_decoded_from_the_prior(conditional):
    """The z behind the Fréchet distance's generated set and behind the judge's class score: all
    of them, pooled, have mean 0 and standard deviation 1 in every dimension (N(0, I), as the
    docstrings say: a draw scaled by 0.5 or shifted by 0.1, which would flatter both numbers,
    fails), no two alike, and a conditional model's are asked for each class as often as the
    test split holds it (the distance) or N_JUDGED times (the class score)."""
    classes = {"names": ["other", "spiral_odd"], "conditions": torch.eye(2)}
    model = PriorRecorder(cond_dim=2 if conditional else 0)
    judge = gv.GalaxyClassifier(2)
    train, test = two_class_galaxies(900, seed=1), two_class_galaxies(600, seed=2)
    gv.galaxy_frechet(model, judge, train, test, gv.reconstructions(model, test), classes, seed=3)
    decoded_for_the_distance = len(model.seen)
    if conditional:
        gv.generated_class_score(model, judge, classes, seed=4)
    z = torch.cat([z for z, _ in model.seen])
    # the reconstructions are decoded from μ of real images: leave them out (their z is not a draw)
    prior = torch.cat([z for z, _ in model.seen[:decoded_for_the_distance] if z[:, 3:].abs().sum() > 0] +
                      [z for z, _ in model.seen[decoded_for_the_distance:]])
    expected = 600 + (2 * gv.N_JUDGED if conditional else 0)
    assert len(prior) == expected and len(torch.unique(prior, dim=0)) == expected
    assert prior.mean(0).abs().max() < 0.2 and (prior.std(0) - 1).abs().max() < 0.2  # each dimension
    assert prior.mean().abs() < 0.05 and (prior.std() - 1).abs() < 0.05  # pooled: 8 x 600 values or more
    if conditional:
        asked = torch.cat([c.argmax(1) for z, c in model.seen if z[:, 3:].abs().sum() > 0])
        assert torch.bincount(asked).tolist() == [400 + gv.N_JUDGED, 200 + gv.N_JUDGED]
    assert len(z) > len(prior)  # the reconstructions were decoded too


def test_galaxy_frechet_compares_sets_of_the_test_splits_class_sizes(monkeypatch):
    """galaxy_frechet hands cnn.frechet_distance the judge's features of each set against the real
    test galaxies': overall (45 against 45) and per class (30 and 15 against the test split's 30
    and 15) for the reconstructions and the real floor, the generated set overall only for an
    unconditional model; the reconstructions of a model that redraws the test images themselves
    (the stand-in decodes each image's mean colour; the test images here are flat colours) score
    0, and the floor draws real training galaxies, not test ones."""
    calls, distance = [], gv.cnn.frechet_distance
    monkeypatch.setattr(gv.cnn, "frechet_distance", lambda a, b: calls.append((a, b)) or distance(a, b))
    classes = {"names": ["other", "spiral_odd"], "conditions": torch.eye(2)}
    test = two_class_galaxies(45, seed=2)
    colours = torch.rand(45, 3, 1, 1, generator=torch.Generator().manual_seed(5))
    test["x"] = (colours.expand(-1, -1, 16, 16) * 255).round().to(torch.uint8)
    judge = gv.GalaxyClassifier(2)
    model = PriorRecorder()
    result = gv.galaxy_frechet(model, judge, two_class_galaxies(90, seed=1), test, gv.reconstructions(model, test),
                               classes, seed=3)
    assert set(result) == {"frechet_n", "frechet_generated", "frechet_reconstructed", "frechet_floor",
                           "frechet_reconstructed_other", "frechet_reconstructed_spiral_odd",
                           "frechet_floor_other", "frechet_floor_spiral_odd"}
    assert [(len(a), len(b)) for a, b in calls] == [(45, 45), (45, 45), (30, 30), (15, 15), (45, 45), (30, 30), (15, 15)]
    real = gv.judge_features(judge, test["x"].float() / 255)
    assert all(torch.equal(b, real) for b in (calls[0][1], calls[1][1], calls[4][1]))
    assert result["frechet_reconstructed"] < 1e-3 * result["frechet_floor"]
    assert result["frechet_n"] == 45


@pytest.fixture(scope="module")
def real_galaxies_and_judge(tmp_path_factory):
    """600 of the real JPEGs (64x64, the default crop) and the committed judge; skipped without them."""
    weights = ROOT / "figures" / "galaxy_classifier_amp.pt"
    if not weights.is_file():
        pytest.skip(f"the committed judge ({weights}) not found")
    data, _ = real_galaxies(tmp_path_factory.mktemp("real"), 600)
    judge = gv.GalaxyClassifier(2)
    common.load_weights(weights, gv.CLASSIFIER, {"model": judge}, "--classifier-weights")
    return data["x"].float() / 255, judge


def test_real_galaxies_score_near_zero_and_a_blurred_copy_scores_worse(real_galaxies_and_judge):
    """In the committed judge's features, 300 real galaxies against 300 others score near the
    floor, a blurred copy of the same 300 (a 5x5 Gaussian, σ 1.5 pixels: what a VAE's decoder
    draws) far worse (measured: 0.42, 6.5), and one more blurred worse still (8.8); a copy with its
    colours swapped (RGB → BGR) is not a galaxy either, though these features, trained to tell
    the two classes apart, notice it less than blur (2.0)."""
    x, judge = real_galaxies_and_judge
    a, b = judge_features_of(judge, x[:300]), judge_features_of(judge, x[300:])
    real = gv.cnn.frechet_distance(a, b)
    blurred = [gv.cnn.frechet_distance(judge_features_of(judge, blur(x[:300], s)), b) for s in (1.5, 3.0)]
    swapped = gv.cnn.frechet_distance(judge_features_of(judge, x[:300].flip(1)), b)
    assert real < 2.0 and 5 * real < blurred[0] < blurred[1] and swapped > 3 * real, (real, blurred, swapped)


def judge_features_of(judge, images):
    return gv.judge_features(judge, images)


def blur(images, sigma):
    """A 5x5 Gaussian blur of each channel (zero padding outside the dark frame)."""
    t = torch.arange(5) - 2.0
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = (kernel[:, None] * kernel[None, :]) / kernel.sum() ** 2
    return F.conv2d(images, kernel.expand(3, 1, 5, 5), padding=2, groups=3)


# --- the VAE-GAN terms (--gan-weight, --dis-l-weight) --------------------------------------------
def discriminator_by_hand(discriminator, images):
    """D's layers written out (train mode: BatchNorm with the batch's own statistics): each 4x4
    stride-2 convolution, then BatchNorm (all but the first) and LeakyReLU 0.2; Dis_l is the last
    convolution's output flattened; the logit one linear map of it."""
    h = images
    convs = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in discriminator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for i, conv in enumerate(convs):
        h = F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1)
        if i:
            norm = norms[i - 1]
            mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
            h = (h - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
        h = torch.where(h > 0, h, 0.2 * h)
    features = h.flatten(1)
    return features @ discriminator.to_logit.weight.T[:, 0] + discriminator.to_logit.bias, features


@pytest.mark.parametrize("conditional", [False, True])
def test_the_vae_gan_step_adds_the_weighted_gan_and_dis_l_terms_and_steps_the_discriminator_on_its_own_loss(conditional):
    """--gan-weight 3 --dis-l-weight 0.07 (not the defaults 0): the VAE's gradient is that of
    the ELBO + 3·(-log D(x̃) - log D(x_p)) + 0.07·½ Σ (Dis_l(x̃) - Dis_l(x))², with x̃ = σ(logits)
    of the batch, x_p = σ(Dec(z_p[, c])) of prior draws given the batch's own conditions and
    Dis_l(x) a fixed target (no gradient through it), written by hand (objective_by_hand,
    decode_by_hand, discriminator_by_hand, F.logsigmoid); D moves by an SGD step on its own loss
    -[log D(x) + log(1 - D(x̃)) + log(1 - D(x_p))] only (a VAE term leaking into D, or D's loss
    into the VAE, fails). Draw order: shuffle, ε, z_p."""
    cond_flags = ["--conditional", "--labels", "labels.csv"] if conditional else []
    args = step_args("--arch", "conv", "--gan-weight", "3", "--dis-l-weight", "0.07", *cond_flags)
    torch.manual_seed(0)
    model = away_from_the_prior(gv.GalaxyVAE("conv", LATENT, SIZE, COND_DIM if conditional else 0))
    discriminator = gv.Discriminator(SIZE)
    reference, dis_reference = copy.deepcopy(model).train(), copy.deepcopy(discriminator).train()
    data = tiny_data(conditional=conditional)

    draws = torch.Generator().manual_seed(5)
    order = torch.randperm(BATCH, generator=draws)
    eps = torch.randn(BATCH, LATENT, generator=draws)
    z_prior = torch.randn(BATCH, LATENT, generator=draws)
    images = data["x"][order].float() / 255
    cond = data["c"][order] if conditional else None
    elbo = objective_by_hand(reference, images, cond, eps, KL_WEIGHT)["loss"]
    features = reference.encoder(images)
    features = torch.cat([features, cond], 1) if conditional else features
    mu, logvar = reference.to_mu(features), reference.to_logvar(features)
    reconstructions = torch.sigmoid(decode_by_hand(reference, mu + torch.exp(0.5 * logvar) * eps, cond))
    prior = torch.sigmoid(decode_by_hand(reference, z_prior, cond))
    (real, real_f), (recon, recon_f), (fake, _) = (discriminator_by_hand(dis_reference, x)
                                                    for x in (images, reconstructions, prior))
    fool = -F.logsigmoid(recon).mean() - F.logsigmoid(fake).mean()
    llike = 0.5 * (recon_f - real_f.detach()).pow(2).sum(1).mean()
    dis = -F.logsigmoid(real).mean() - F.logsigmoid(-recon).mean() - F.logsigmoid(-fake).mean()
    gradients = torch.autograd.grad(elbo + 3 * fool + 0.07 * llike, list(reference.parameters()), retain_graph=True)
    dis_gradients = torch.autograd.grad(dis, list(dis_reference.parameters()))

    discriminator.optimizer = torch.optim.SGD(discriminator.parameters(), lr=0.05)
    before = [p.detach().clone() for p in discriminator.parameters()]
    logged = gv.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, args, 1,
                            torch.Generator().manual_seed(5), None, discriminator)
    for (name, param), gradient in zip(model.named_parameters(), gradients):
        assert close(param.grad, gradient), name
    for (name, param), old, gradient in zip(discriminator.named_parameters(), before, dis_gradients):
        assert close(param.detach(), old - 0.05 * gradient, rtol=1e-5), name
    for term, value in (("fool", fool), ("llike", llike), ("dis", dis), ("d_real", torch.sigmoid(real).mean()),
                        ("d_prior", torch.sigmoid(fake).mean())):
        assert close(logged[term], value.detach().view(1), 1e-5), term


def test_the_discriminator_trains_with_its_own_adam_and_is_saved_beside_the_vae(tmp_path, monkeypatch):
    """fit with --gan-weight hands train_epoch a Discriminator whose optimizer is Adam at DIS_LR with
    DIS_BETAS (not the VAE's --lr, here 3e-4), the VAE's Adam at --lr; both networks and both
    optimizers are in the checkpoint --resume reads; without either weight no discriminator."""
    handed, real_train_epoch = [], gv.train_epoch

    def recording_train_epoch(model, optimizer, data, args, epoch, generator, helper=None, discriminator=None):
        handed.append((optimizer, discriminator))
        return real_train_epoch(model, optimizer, data, args, epoch, generator, helper, discriminator)

    monkeypatch.setattr(gv, "train_epoch", recording_train_epoch)
    for stem, extra in (("gan", ["--dis-l-weight", "0.5"]), ("vae", [])):
        args = step_args("--arch", "conv", "--lr", "3e-4", "--epochs", "1", "--out-dir", tmp_path, *extra)
        gv.fit(gv.GalaxyVAE("conv", LATENT, SIZE), tiny_data(), tiny_data(seed=1), args, tmp_path / stem,
               torch.Generator().manual_seed(0), None)
    (optimizer, discriminator), (_, none) = handed
    assert none is None and isinstance(discriminator, gv.Discriminator)
    (group,) = discriminator.optimizer.param_groups
    assert type(discriminator.optimizer) is torch.optim.Adam and group["lr"] == gv.DIS_LR != 3e-4
    assert group["betas"] == gv.DIS_BETAS and optimizer.param_groups[0]["lr"] == 3e-4
    checkpoint = torch.load(tmp_path / "gan.ckpt", weights_only=False)
    assert {"model", "discriminator"} <= set(checkpoint["models"])
    assert {"optimizer", "discriminator_optimizer"} <= set(checkpoint["optimizers"])
    assert set(torch.load(tmp_path / "gan.pt", weights_only=False)["models"]) == {"model"}  # what --load needs


@pytest.mark.slow
def test_compare_draws_real_and_generated_galaxies_class_by_class(galaxies, tmp_path, monkeypatch):
    """--compare with an unconditional and a conditional model (and the judge): one block of real
    test galaxies per class, then each model's galaxies of that class, all 32x32 (one size):
    the conditional model's decoded given the class, the unconditional model's those the judge
    reads as the class, with the count out of 400 in the label."""
    root, _ = galaxies
    flags = ["--labels", root / "labels.csv", "--batch-size", "16", "--epochs", "1", "--latent-dim", "3"]
    gv.main(args_for(root, tmp_path, "--experiment", "classifier", *flags))
    judge = ["--classifier-weights", tmp_path / "galaxy_classifier_e1_bs16_size32.pt"]
    gv.main(args_for(root, tmp_path, *flags, *judge))
    gv.main(args_for(root, tmp_path, "--conditional", *flags, *judge))
    drawn = {}
    monkeypatch.setattr(common, "plot_image_rows", lambda path, rows, title, **k: drawn.update(path=path, rows=rows, title=title))
    gv.main(args_for(root, tmp_path, "--labels", root / "labels.csv", *judge, "--compare",
                     tmp_path / "galaxy_vae_conv_e1_bs16_size32_z3.pt", tmp_path / "galaxy_vae_conv_cond_e1_bs16_size32_z3.pt"))
    labels = list(drawn["rows"])
    assert drawn["path"] == tmp_path / "galaxy_vae_comparison.png" and len(labels) == 6
    assert labels[0] == "real test galaxies:\nother" and labels[3] == "real test galaxies:\nspiral_odd"
    assert labels[2] == "model 2 (conditional):\ngenerated given other"
    assert labels[1].startswith("model 1 (unconditional):\nprior samples the judge\nreads as other (")
    assert "model 2: galaxy_vae_conv_cond_e1_bs16_size32_z3.pt" in drawn["title"]
    counts = [int(label.split("(")[-1].split("/")[0]) for label in (labels[1], labels[4])]
    assert sum(counts) == 400
    for label, images in drawn["rows"].items():
        assert images.shape[1:] == (3, 32, 32) and len(images) <= gv.N_SHOWN, label


def test_the_vae_gan_flags_refuse_what_they_cannot_use(galaxies, tmp_path):
    root, _ = galaxies
    base = args_for(root, tmp_path, "--labels", root / "labels.csv", "--epochs", "1")
    assert_one_line_error(run_script("galaxy_vae.py", *base, "--experiment", "classifier", "--gan-weight", "1"),
                          "--gan-weight and --dis-l-weight train a VAE's decoder")
    assert_one_line_error(run_script("galaxy_vae.py", *base, "--arch", "mlp", "--image-size", "40", "--dis-l-weight", "1"),
                          "need an --image-size that is a multiple of 16, got 40")
    assert_one_line_error(run_script("galaxy_vae.py", *base, "--gan-weight", "-1"), "--gan-weight")
    assert_one_line_error(run_script("galaxy_vae.py", *args_for(root, tmp_path, "--compare", "a.pt")),
                          "--compare draws trained models' galaxies by class: it needs --labels")


def test_the_gaussian_likelihood_step_is_the_sigma_vae_loss_with_the_batchs_best_variance():
    """--likelihood gaussian --kl-weight 0.3: the step's gradient is that of
    -log N(x | σ(l), s² I) (torch.distributions.Normal, summed over the pixel values) + 0.3·KL,
    averaged over the batch, with s² the batch's mean squared error held fixed (Rybkin et al.'s
    best σ); the logged bce is still the Bernoulli one. Also: that s² is the variance at which
    the Gaussian likelihood of the batch is largest (its derivative in s² is 0 there)."""
    args = step_args("--arch", "conv", "--likelihood", "gaussian")
    torch.manual_seed(0)
    model = away_from_the_prior(gv.GalaxyVAE("conv", LATENT, SIZE))
    reference = copy.deepcopy(model).train()
    data = tiny_data()
    draws = torch.Generator().manual_seed(5)
    order = torch.randperm(BATCH, generator=draws)
    eps = torch.randn(BATCH, LATENT, generator=draws)
    images = data["x"][order].float() / 255
    features = reference.encoder(images)
    mu, logvar = reference.to_mu(features), reference.to_logvar(features)
    mean = torch.sigmoid(decode_by_hand(reference, mu + torch.exp(0.5 * logvar) * eps, None))
    variance = (mean - images).pow(2).mean().detach()
    nll = -torch.distributions.Normal(mean, variance.sqrt()).log_prob(images).flatten(1).sum(1)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, torch.exp(0.5 * logvar)),
                                           torch.distributions.Normal(0.0, 1.0)).sum(1)
    gradients = torch.autograd.grad((nll + KL_WEIGHT * kl).mean(), list(reference.parameters()))
    logged = gv.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), data, args, 1,
                            torch.Generator().manual_seed(5))
    for (name, param), gradient in zip(model.named_parameters(), gradients):
        assert close(param.grad, gradient), name
    bce = F.binary_cross_entropy(mean, images, reduction="none").flatten(1).sum(1).mean()
    assert close(logged["bce"], bce.detach().view(1), 1e-4)
    s2 = variance.clone().requires_grad_(True)
    total = -torch.distributions.Normal(mean.detach(), s2.sqrt()).log_prob(images).sum()
    (slope,) = torch.autograd.grad(total, s2)
    assert abs(slope.item()) < 1e-3 * total.abs().item()


def test_init_starts_the_vae_from_trained_weights_and_names_the_run_after_them(galaxies, tmp_path, monkeypatch):
    """--init FILE: the model fit receives holds FILE's weights exactly (not a random start), the
    run is named ..._from-<FILE's stem>, and a file of another architecture is one line."""
    root, _ = galaxies
    flags = ["--labels", root / "labels.csv", "--batch-size", "16", "--latent-dim", "3"]
    gv.main(args_for(root, tmp_path, *flags, "--epochs", "1"))
    trained = tmp_path / "galaxy_vae_conv_e1_bs16_size32_z3.pt"
    handed = []

    class Stop(Exception):
        pass

    def recording_fit(model, train, test, args, stem, *rest):
        handed.append(({k: v.clone() for k, v in model.state_dict().items()}, stem))
        raise Stop

    monkeypatch.setattr(gv, "fit", recording_fit)
    with pytest.raises(Stop):
        gv.main(args_for(root, tmp_path, *flags, "--epochs", "2", "--gan-weight", "1", "--init", trained))
    (state, stem), = handed
    saved = torch.load(trained, weights_only=False)["models"]["model"]
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in state)
    assert stem.name == "galaxy_vae_conv_e2_bs16_size32_z3_gan1_from-galaxy_vae_conv_e1_bs16_size32_z3"
    monkeypatch.undo()
    assert_one_line_error(run_script("galaxy_vae.py", *args_for(root, tmp_path, *flags, "--arch", "mlp", "--init", trained)),
                          f"--init: {trained} was trained with --arch conv: give the same to start from it")


def test_init_from_a_checkpoint_with_a_helper_starts_the_helper_from_it_too(galaxies, tmp_path, monkeypatch):
    """--init FILE.ckpt of a --class-loss-weight run: the helper the first epoch trains holds the
    helper of FILE exactly; --init of its .pt (the VAE only) gives a new random helper."""
    root, _ = galaxies
    flags = ["--labels", root / "labels.csv", "--batch-size", "16", "--latent-dim", "3", "--conditional",
             "--class-loss-weight", "2"]
    gv.main(args_for(root, tmp_path, *flags, "--epochs", "1"))
    stem = tmp_path / "galaxy_vae_conv_cond_e1_bs16_size32_z3_classloss2"
    handed = []

    class Stop(Exception):
        pass

    def recording_epoch(model, optimizer, data, args, epoch, generator, helper=None, discriminator=None):
        handed.append({k: v.clone() for k, v in helper.state_dict().items()})
        raise Stop

    monkeypatch.setattr(gv, "train_epoch", recording_epoch)
    for suffix in (".ckpt", ".pt"):
        with pytest.raises(Stop):
            gv.main(args_for(root, tmp_path, *flags, "--epochs", "2", "--init", f"{stem}{suffix}"))
    saved = torch.load(f"{stem}.ckpt", weights_only=False)["models"]["helper"]
    from_ckpt, from_pt = handed
    assert from_ckpt.keys() == saved.keys() and all(torch.equal(from_ckpt[k], saved[k]) for k in saved)
    assert not torch.equal(from_pt["net.0.weight"], saved["net.0.weight"])
