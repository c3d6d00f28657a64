"""autoencoder.py: architectures, losses and latent-spread numbers against independent
computations, the 100-label subset, the frozen encoder, every experiment with --load, bad input."""
import json
import math
import shutil

import pytest
import torch

import autoencoder
from conftest import assert_one_line_error, run_script, synthetic_split, write_idx


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--device", "cpu",
            "--epochs", "2", "--limit", "128", *map(str, extra)]


def metrics(path):
    return json.loads(path.read_text())


# --- architecture --------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
def test_fc_bottleneck_has_two_units_and_is_the_only_layer_that_narrow(normalize):
    model = autoencoder.FCAutoencoder(normalize)
    widths = [784] + [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert min(widths) == 2 and widths.count(2) == 1, widths
    assert model.encoder(torch.rand(5, 1, 28, 28)).shape == (5, 2)
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 1, 28, 28)


def test_normalized_bottleneck_gives_mean_zero_variance_one_per_neuron():
    torch.manual_seed(0)
    model = autoencoder.FCAutoencoder(normalize=True).train()
    codes = model.encoder(3 * torch.rand(256, 1, 28, 28) + 1)  # inputs far from standardised
    assert codes.mean(0).abs().max().item() < 1e-5
    # var/(var + ε): BatchNorm's ε = 1e-5 is not negligible against an untrained code's variance
    assert codes.var(0, unbiased=False).sub(1).abs().max().item() < 1e-2
    assert not any(p.requires_grad for p in model.encoder[-1].parameters())  # nothing rescales it


@pytest.mark.parametrize("fc,coarsest", [(True, (3136,)), (False, (3, 2, 2))])
def test_conv_autoencoder_shapes(fc, coarsest):
    model, h = autoencoder.ConvAutoencoder(12, fc), torch.rand(4, 1, 28, 28)
    encoder_shapes = []
    for layer in model.encoder.net:
        h = layer(h)
        encoder_shapes.append(tuple(h.shape[1:]))
    assert encoder_shapes[1] == (32, 14, 14) and encoder_shapes[3] == (64, 7, 7)
    assert encoder_shapes[-2] == coarsest and h.shape == (4, 12)  # d = 12 from the coarsest map
    decoder_shapes = []  # after each transposed conv: the encoder's shapes in reverse
    for layer in model.decoder.net:
        h = layer(h)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            decoder_shapes.append(tuple(h.shape[1:]))
    assert decoder_shapes == ([] if fc else [(32, 4, 4), (64, 7, 7)]) + [(32, 14, 14), (1, 28, 28)]
    assert h.min() >= 0 and h.max() <= 1


def test_classifier_is_the_encoder_plus_a_two_layer_mlp():
    model = autoencoder.Classifier(12)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 64), (64, 10)]
    autoencoder.ConvAutoencoder(12).encoder.load_state_dict(model.encoder.state_dict())  # strict


# --- losses and numbers --------------------------------------------------------------------------
def test_reconstruction_losses_average_pixels_and_batch():
    torch.manual_seed(0)
    reconstruction, x = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28)
    d = (reconstruction.double() - x.double()).flatten().tolist()
    mse, l1 = sum(v * v for v in d) / (6 * 784), sum(abs(v) for v in d) / (6 * 784)
    assert autoencoder.reconstruction_loss(reconstruction, x, "mse").item() == pytest.approx(mse, rel=1e-5)
    assert autoencoder.reconstruction_loss(reconstruction, x, "l1").item() == pytest.approx(l1, rel=1e-5)


def toy_latents(a=3.0, r=1.0, copies=5):
    """Two classes with centroids (±a, 0), each point r above or below its centroid: the RMS
    radius is sqrt(a² + r²), a code lies r from its centroid, the centroids lie 2a apart."""
    points = torch.tensor([[-a, r], [-a, -r], [a, r], [a, -r]]).repeat(copies, 1)
    labels = torch.tensor([0, 0, 1, 1]).repeat(copies)
    return points, labels


def test_latent_spread_on_a_toy_set_with_known_spread():
    points, labels = toy_latents(a=3.0, r=1.0)
    scale = math.sqrt(3.0 ** 2 + 1.0 ** 2)
    spread = autoencoder.latent_spread(points, labels)
    assert spread["within_class"] == pytest.approx(1.0 / scale)
    assert spread["between_centroids"] == pytest.approx(6.0 / scale)
    assert spread["separation_ratio"] == pytest.approx(6.0)
    moved = autoencoder.latent_spread(7 * points + 5, labels)  # scale- and shift-free
    assert moved == pytest.approx(spread)


def test_pca_finds_the_direction_of_largest_spread():
    torch.manual_seed(0)
    codes = torch.randn(500, 5) * torch.tensor([0.1, 5.0, 0.1, 1.0, 0.1])
    projected = autoencoder.pca_2d(codes)
    assert projected.shape == (500, 2)
    assert torch.allclose(projected[:, 0].abs(), codes[:, 1].sub(codes[:, 1].mean()).abs(), atol=0.5)


# --- behaviour -----------------------------------------------------------------------------------
def write_data_changed_after(root, n_kept):
    """Synthetic MNIST whose training set equals the usual one for the first n_kept examples and
    differs everywhere after them (inverted images, shifted labels)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = synthetic_split(512, 1)
    images[n_kept:] = 255 - images[n_kept:]
    labels[n_kept:] = (labels[n_kept:] + 3) % 10
    write_idx(raw / "train-images-idx3-ubyte", images)
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    for kind, tensor in zip(("images-idx3", "labels-idx1"), synthetic_split(256, 2)):
        write_idx(raw / f"t10k-{kind}-ubyte", tensor)


def test_few_labels_and_transfer_train_on_exactly_the_first_100(synthetic_data, tmp_path):
    changed = tmp_path / "changed"
    write_data_changed_after(changed, autoencoder.N_LABELLED)
    autoencoder.main(quick_args(synthetic_data, tmp_path / "a", "--experiment", "conv", "--limit", 256))
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "autoencoder_conv.pt", tmp_path / "b")  # the same pretrained encoder
    for out, data in (("a", synthetic_data), ("b", changed)):
        autoencoder.main(quick_args(data, tmp_path / out, "--experiment", "transfer", "--limit", 256))
    a, b = (metrics(tmp_path / out / "autoencoder_transfer_metrics.json") for out in "ab")
    assert a["final"]["labelled_examples"] == 100 and a["final"] == b["final"]
    # few-labels was trained along the way: its checkpoint holds its history
    histories = [torch.load(tmp_path / out / f"{run}.pt", weights_only=True)["history"] + m["history"]
                 for out, m in (("a", a), ("b", b)) for run in ["autoencoder_few_labels"]]
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in h] for h in histories]
    assert untimed[0] == untimed[1]


def test_classifier_decoder_trains_only_the_decoder(synthetic_data, tmp_path, capsys):
    autoencoder.main(quick_args(synthetic_data, tmp_path, "--experiment", "classifier-decoder"))
    said = capsys.readouterr().out
    assert "training conv first" in said and "training classifier first" in said
    classifier = torch.load(tmp_path / "autoencoder_classifier.pt", weights_only=True)["models"]["model"]
    decoded = torch.load(tmp_path / "autoencoder_classifier_decoder.pt", weights_only=True)["models"]["model"]
    encoder = [name for name in decoded if name.startswith("encoder.")]
    assert encoder and all(torch.equal(decoded[n], classifier[n]) for n in encoder)  # bit-identical
    spread = metrics(tmp_path / "autoencoder_classifier_decoder_metrics.json")["final"]["latent_spread"]
    assert set(spread) == {"conv autoencoder", "classifier encoder"}


EXPERIMENT_OUTPUTS = {
    "fc": ("autoencoder_fc", ["_loss.png", "_reconstructions.png"]),
    "naive": ("autoencoder_naive", ["_samples.png", "_codes.png"]),
    "normalized": ("autoencoder_normalized", ["_loss.png", "_reconstructions.png", "_samples.png"]),
    "conv": ("autoencoder_conv", ["_loss.png", "_reconstructions.png"]),
    "classifier": ("autoencoder_classifier", ["_curves.png"]),
    "classifier-decoder": ("autoencoder_classifier_decoder", ["_loss.png", "_digits.png"]),
    "few-labels": ("autoencoder_few_labels", ["_curves.png"]),
    "transfer": ("autoencoder_transfer", ["_curves.png"]),
}


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    """Every experiment run once, in the order a user would, into one folder."""
    out = tmp_path_factory.mktemp("autoencoder")
    for experiment in EXPERIMENT_OUTPUTS:
        autoencoder.main(quick_args(synthetic_data, out, "--experiment", experiment))
    return out


@pytest.mark.parametrize("experiment", list(EXPERIMENT_OUTPUTS))
def test_every_experiment_writes_its_outputs_and_load_reproduces_them(experiment, trained,
                                                                     synthetic_data, tmp_path):
    run, suffixes = EXPERIMENT_OUTPUTS[experiment]
    for suffix in suffixes + ["_metrics.json"]:
        assert (trained / f"{run}{suffix}").is_file(), run + suffix
    weights = "autoencoder_fc" if experiment == "naive" else run
    autoencoder.main(quick_args(synthetic_data, tmp_path, "--experiment", experiment,
                                "--load", trained / f"{weights}.pt"))
    assert metrics(tmp_path / f"{run}_metrics.json")["final"] == metrics(trained / f"{run}_metrics.json")["final"]


def test_comparison_figures_exist(trained):
    for name in ("autoencoder_codes.png", "autoencoder_codes.json", "autoencoder_latent_pca.png",
                 "autoencoder_transfer_vs_few_labels.png"):
        assert (trained / name).is_file(), name
    codes = json.loads((trained / "autoencoder_codes.json").read_text())
    assert set(codes) == {"fc", "normalized"}


def test_resume_continues_to_the_same_result(synthetic_data, tmp_path):
    common = ["--experiment", "few-labels", "--eval-every", "1"]
    autoencoder.main(quick_args(synthetic_data, tmp_path / "whole", *common, "--epochs", 4))
    autoencoder.main(quick_args(synthetic_data, tmp_path / "split", *common))
    autoencoder.main(quick_args(synthetic_data, tmp_path / "split", *common, "--epochs", 4, "--resume"))
    whole, split = (metrics(tmp_path / d / "autoencoder_few_labels_metrics.json") for d in ("whole", "split"))
    assert whole["final"] == split["final"]


def test_real_fashion_mnist_fc_learns(shared_data, tmp_path):
    autoencoder.main(["--data-dir", str(shared_data), "--out-dir", str(tmp_path), "--device", "cpu",
                      "--epochs", "2", "--limit", "2000"])
    history = metrics(tmp_path / "autoencoder_fc_metrics.json")["history"]
    assert history[-1]["test_mse"] < history[0]["test_mse"] < 0.1


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,phrases", [
    (["--experiment", "pca"], ["invalid choice", "pca"]),
    (["--latent-dim", "0", "--experiment", "conv"], ["--latent-dim", "> 0"]),
    (["--latent-dim", "8"], ["two-neuron bottleneck"]),
    (["--no-fc", "--experiment", "classifier"], ["--no-fc"]),
    (["--no-fc", "--experiment", "conv", "--latent-dim", "10"], ["divisible by 4"]),
])
def test_bad_flags_are_one_line_errors(extra, phrases):
    assert_one_line_error(run_script("autoencoder.py", *extra), *phrases)


def test_load_of_another_experiments_weights_is_refused(trained, synthetic_data, tmp_path):
    result = run_script("autoencoder.py", *quick_args(synthetic_data, tmp_path, "--experiment", "conv",
                                                      "--load", trained / "autoencoder_fc.pt"))
    assert_one_line_error(result, "'autoencoder_fc'", "expected 'autoencoder_conv'")


def test_naive_and_normalized_generation_write_sample_quality(synthetic_data, cnn_weights, tmp_path):
    for experiment in ("naive", "normalized"):
        autoencoder.main(quick_args(synthetic_data, tmp_path, "--experiment", experiment,
                                    "--classifier-weights", cnn_weights))
    for run in ("autoencoder_naive", "autoencoder_normalized"):
        final = metrics(tmp_path / f"{run}_metrics.json")["final"]
        assert final["frechet_distance"] > 0 and final["n_generated"] == 128, run
