"""autoencoder.py: architectures, losses and latent-spread numbers against independent
computations, the 100-label subset, the frozen encoder, every experiment with --load, the weights
an experiment builds on (never trained behind the user's back), --resume, bad input, every
model's training step on the meta device and float64 only on the CPU; each experiment's training
step against a hand-written Adam step on its documented objective, the freezing edge, --amp, and
what fit hands train_epoch (network, frozen parts, learning rates, loss, data and its range)."""
import copy
import json
import math
import shutil

import pytest
import torch

import autoencoder
import common
from conftest import (DEVICE, DEVICE_FLAGS, adam_by_hand, assert_one_line_error, run_script, synthetic_split,
                      write_idx, guard_host_copies, write_mnist_like)


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "128", *map(str, extra)]


def metrics(path):
    return json.loads(path.read_text())


def run_of(*flags):
    """The name of the run that quick_args(..., *flags) writes, e.g. autoencoder_conv_e2_limit128
    (the rule is pinned by test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults)."""
    return autoencoder.run_name(autoencoder.parse_args(quick_args("data", "out", *flags)))


def dependency_flags(experiment, folder, *flags):
    """--<name>-weights FILE for each run `experiment` builds on: the quick run of that name
    (with the same extra `flags`) in `folder`."""
    return [flag for name in autoencoder.EXPERIMENTS[experiment].needs
            for flag in (f"--{name}-weights", folder / f"{run_of('--experiment', name, *flags)}.pt")]


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


# --- device paths, without the hardware ----------------------------------------------------------
class WithoutFloat64(torch.Tensor):
    """A tensor that behaves as one on Apple's MPS device does for the analysis functions: float64
    and torch.linalg raise on it; .cpu() gives back a plain tensor, where both work."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        to_float64 = func is torch.Tensor.double or (
            func is torch.Tensor.to and torch.float64 in (*args, *kwargs.values()))
        if to_float64 or getattr(func, "__module__", None) == "torch._C._linalg":
            raise AssertionError(f"{func.__name__} on a device without float64 or linalg")
        return super().__torch_function__(func, types, args, kwargs)


def test_latent_spread_and_pca_move_to_the_cpu_before_float64_and_linalg():
    torch.manual_seed(0)
    codes, labels = torch.randn(60, 12), torch.arange(60) % 10
    on_device = [t.to(DEVICE).as_subclass(WithoutFloat64) for t in (codes, labels)]
    assert autoencoder.latent_spread(*on_device) == autoencoder.latent_spread(codes, labels)
    assert torch.equal(autoencoder.pca_2d(on_device[0]), autoencoder.pca_2d(codes))
    with pytest.raises(AssertionError, match="on a device without float64"):  # the fake bites
        on_device[0].double()


# the models the experiments train: fc and normalized (Fashion-MNIST); conv, conv --no-fc and the
# classifier (also few-labels'); transfer's classifier with its pretrained-encoder parameter group
TRAINED = {
    "fc": lambda: autoencoder.FCAutoencoder(),
    "normalized": lambda: autoencoder.FCAutoencoder(normalize=True),
    "conv": lambda: autoencoder.ConvAutoencoder(12),
    "conv --no-fc": lambda: autoencoder.ConvAutoencoder(12, fc=False),
    "classifier": lambda: autoencoder.Classifier(12),
    "transfer": lambda: autoencoder.Classifier(12),
}


@pytest.mark.parametrize("flags", TRAINED)
def test_a_training_epoch_runs_on_the_meta_device(flags, monkeypatch):
    """train_epoch, the script's own per-batch path, with model, optimizer and data on PyTorch's
    meta device (shapes, no values): a tensor left on the CPU, an .item() (a wait for the
    device) or a plain CPU → device copy inside the step fails here."""
    args = autoencoder.parse_args(["--experiment", *flags.split(), "--batch-size", "4"])
    loss = autoencoder.EXPERIMENTS[args.experiment].loss
    meta = torch.device("meta")
    with meta:
        model = TRAINED[flags]()
        x, y = torch.empty(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)
    optimizer = autoencoder.make_optimizer(model, args, pretrained_encoder=args.experiment == "transfer")
    copies = guard_host_copies(monkeypatch)
    terms = autoencoder.train_epoch(model, optimizer, x, y, loss, args, 1, torch.Generator().manual_seed(0))
    assert set(terms) == ({"ce", "acc"} if loss == "ce" else {loss})
    assert all(v.device == meta and v.shape == (2,) for v in terms.values())  # two batches of 4
    assert all(p.grad is not None and p.grad.device == meta for p in model.parameters())
    assert copies == [(8,)]  # the order, once per epoch: no noise in an autoencoder


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
    conv = run_of("--experiment", "conv", "--limit", 256)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / f"{conv}.pt", tmp_path / "b")  # the same pretrained encoder
    for out, data in (("a", synthetic_data), ("b", changed)):
        for experiment in ("few-labels", "transfer"):  # transfer reads few-labels' history
            autoencoder.main(quick_args(data, tmp_path / out, "--experiment", experiment, "--limit", 256,
                                        *dependency_flags(experiment, tmp_path / out, "--limit", 256)))
    few, transfer = (run_of("--experiment", e, "--limit", 256) for e in ("few-labels", "transfer"))
    runs = [{run: metrics(tmp_path / out / f"{run}_metrics.json") for run in (few, transfer)}
            for out in "ab"]
    a, b = (r[transfer] for r in runs)
    assert a["final"]["labelled_examples"] == 100 and a["final"] == b["final"]
    assert runs[0][few]["final"] == runs[1][few]["final"]
    histories = [r[few]["history"] + r[transfer]["history"] for r in runs]
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in h] for h in histories]
    assert untimed[0] == untimed[1]


def test_classifier_decoder_trains_only_the_decoder(synthetic_data, tmp_path, capsys):
    for experiment in ("conv", "classifier", "classifier-decoder"):
        autoencoder.main(quick_args(synthetic_data, tmp_path, "--experiment", experiment,
                                    *dependency_flags(experiment, tmp_path)))
    said = capsys.readouterr().out
    assert "--conv-weights: loaded" in said and "--classifier-weights: loaded" in said
    classifier, decoder = (run_of("--experiment", e) for e in ("classifier", "classifier-decoder"))
    classifier = torch.load(tmp_path / f"{classifier}.pt", weights_only=True)["models"]["model"]
    decoded = torch.load(tmp_path / f"{decoder}.pt", weights_only=True)["models"]["model"]
    encoder = [name for name in decoded if name.startswith("encoder.")]
    assert encoder and all(torch.equal(decoded[n], classifier[n]) for n in encoder)  # bit-identical
    spread = metrics(tmp_path / f"{run_of('--experiment', 'classifier-decoder')}_metrics.json")["final"]["latent_spread"]
    assert set(spread) == {"conv autoencoder", "classifier encoder"}


# each experiment's quick run (naive trains nothing: --epochs is no knob of it) and its outputs
EXPERIMENT_OUTPUTS = {
    "fc": ("autoencoder_fc_e2_limit128", ["_loss.png", "_reconstructions.png"]),
    "naive": ("autoencoder_naive_limit128", ["_samples.png", "_codes.png"]),
    "normalized": ("autoencoder_normalized_e2_limit128",
                   ["_loss.png", "_reconstructions.png", "_samples.png", "_codes.png", "_codes.json"]),
    "conv": ("autoencoder_conv_e2_limit128", ["_loss.png", "_reconstructions.png"]),
    "classifier": ("autoencoder_classifier_e2_limit128", ["_curves.png"]),
    "classifier-decoder": ("autoencoder_classifier_decoder_e2_limit128",
                           ["_loss.png", "_digits.png", "_latent_pca.png"]),
    "few-labels": ("autoencoder_few_labels_e2_limit128", ["_curves.png"]),
    "transfer": ("autoencoder_transfer_e2_limit128", ["_curves.png", "_vs_few_labels.png"]),
}


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    """Every experiment run once, in the order a user would (each after the runs it builds on),
    into one folder."""
    out = tmp_path_factory.mktemp("autoencoder")
    for i, experiment in enumerate(EXPERIMENT_OUTPUTS):
        assert set(autoencoder.EXPERIMENTS[experiment].needs) <= set(list(EXPERIMENT_OUTPUTS)[:i])
        autoencoder.main(quick_args(synthetic_data, out, "--experiment", experiment,
                                    *dependency_flags(experiment, out)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("experiment", list(EXPERIMENT_OUTPUTS))
def test_every_experiment_writes_its_outputs_and_load_reproduces_them(experiment, trained,
                                                                     synthetic_data, tmp_path):
    run, suffixes = EXPERIMENT_OUTPUTS[experiment]
    for suffix in suffixes + ["_metrics.json"]:
        assert (trained / f"{run}{suffix}").is_file(), run + suffix
    # naive trains nothing: run again on the same fc weights; every other one reloads its own file
    reload = [] if experiment == "naive" else ["--load", trained / f"{run}.pt"]
    autoencoder.main(quick_args(synthetic_data, tmp_path, "--experiment", experiment, *reload,
                                *dependency_flags(experiment, trained)))
    assert metrics(tmp_path / f"{run}_metrics.json")["final"] == metrics(trained / f"{run}_metrics.json")["final"]


def test_normalized_compares_the_codes_of_both_autoencoders(trained):
    codes = json.loads((trained / f"{EXPERIMENT_OUTPUTS['normalized'][0]}_codes.json").read_text())
    assert set(codes) == {"fc", "normalized"}


def test_a_run_is_named_after_the_knobs_that_differ_from_its_experiments_defaults():
    """Each experiment's default command keeps the committed name (reproduction); a changed knob
    writes beside it; paths and flags that do not change the result stay out (and naive, which
    trains nothing, has no training knobs); --load keeps the loaded file's name."""
    name = lambda *flags: autoencoder.run_name(autoencoder.parse_args(list(flags)))
    for experiment, spec in autoencoder.EXPERIMENTS.items():
        assert name("--experiment", experiment, "--device", "cpu", "--out-dir", "x", "--data-dir", "y") == spec.run
    assert name("--experiment", "conv", "--no-fc") == "autoencoder_conv_nofc"
    assert name("--experiment", "conv", "--epochs", "20", "--latent-dim", "12") == "autoencoder_conv"
    assert name("--experiment", "conv", "--epochs", "30") == "autoencoder_conv_e30"  # conv's default is 20
    assert name("--experiment", "conv", "--no-fc", "--latent-dim", "16") == "autoencoder_conv_nofc_z16"
    assert name("--experiment", "transfer", "--freeze-epochs", "300") == "autoencoder_transfer_freeze300"
    assert name("--experiment", "transfer", "--encoder-lr-factor", "0.1", "--conv-weights", "a.pt",
                "--few-labels-weights", "b.pt") == "autoencoder_transfer_enclr0.1"
    assert name("--experiment", "few-labels", "--eval-every", "1", "--lr", "3e-3") == "autoencoder_few_labels_lr0.003_eval1"
    assert name("--experiment", "normalized", "--cnn-weights", "c.pt", "--seed", "1") == "autoencoder_normalized_seed1"
    assert name("--experiment", "naive", "--epochs", "2", "--lr", "1e-2",
                "--naive-distribution", "uniform-box") == "autoencoder_naive_uniform-box"
    assert name("--experiment", "conv", "--load", "runs/autoencoder_conv_e5.pt", "--epochs", "9") == "autoencoder_conv_e5"


def test_the_default_dependency_is_the_file_its_command_writes(trained, synthetic_data, tmp_path, capsys):
    """Without --conv-weights, transfer reads autoencoder_conv.pt in --out-dir, the file the
    default conv command writes; with --latent-dim 16, autoencoder_conv_z16.pt, which the command
    its error gives (with --latent-dim 16) writes."""
    for run in ("autoencoder_conv", "autoencoder_few_labels"):
        shutil.copy(trained / f"{run}_e2_limit128.pt", tmp_path / f"{run}.pt")
    autoencoder.main(quick_args(synthetic_data, tmp_path, "--experiment", "transfer"))
    assert f"--conv-weights: loaded {tmp_path / 'autoencoder_conv.pt'}" in capsys.readouterr().out
    message = one_line_error(capsys, quick_args(synthetic_data, tmp_path, "--experiment", "transfer",
                                                "--latent-dim", 16))
    assert str(tmp_path / "autoencoder_conv_z16.pt") in message, message
    assert "--experiment conv --latent-dim 16 --data-dir" in message, message


@pytest.mark.parametrize("eval_every", [1, 3])
def test_resume_after_a_kill_continues_to_the_same_result(eval_every, synthetic_data, tmp_path, monkeypatch):
    """A run killed in epoch 3 continues from its epoch-2 checkpoint to the uninterrupted run's
    numbers, also when epoch 2 was not evaluated (--eval-every 3)."""
    flags = ["--experiment", "few-labels", "--eval-every", eval_every, "--epochs", "4"]
    run = run_of(*flags)
    autoencoder.main(quick_args(synthetic_data, tmp_path / "whole", *flags))
    real_progress = common.progress

    def killed_in_epoch_3(iterable, total, desc):
        if desc == "epoch 3":
            raise KeyboardInterrupt
        return real_progress(iterable, total, desc)

    monkeypatch.setattr(common, "progress", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        autoencoder.main(quick_args(synthetic_data, tmp_path / "split", *flags))
    monkeypatch.undo()
    checkpoint = tmp_path / "split" / f"{run}.ckpt"
    assert common.load_checkpoint(checkpoint, "autoencoder_few_labels")["epoch"] == 2
    autoencoder.main(quick_args(synthetic_data, tmp_path / "split", *flags, "--resume"))
    whole, split = (metrics(tmp_path / d / f"{run}_metrics.json") for d in ("whole", "split"))
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in m["history"]]
               for m in (whole, split)]
    assert [r["epoch"] for r in untimed[0]] == ([1, 2, 3, 4] if eval_every == 1 else [1, 3, 4])
    assert untimed[0] == untimed[1]
    assert whole["final"] == split["final"]


def test_real_fashion_mnist_fc_learns(shared_data, tmp_path):
    autoencoder.main(["--data-dir", str(shared_data), "--out-dir", str(tmp_path), *DEVICE_FLAGS,
                      "--epochs", "2", "--limit", "2000"])
    history = metrics(tmp_path / "autoencoder_fc_e2_limit2000_metrics.json")["history"]
    assert history[-1]["test_mse"] < history[0]["test_mse"] < 0.1


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,phrases", [
    (["--experiment", "pca"], ["invalid choice", "pca"]),
    (["--latent-dim", "0", "--experiment", "conv"], ["--latent-dim", "> 0"]),
    (["--latent-dim", "8"], ["two-neuron bottleneck"]),
    (["--no-fc", "--experiment", "classifier"], ["--no-fc"]),
    (["--freeze-epochs", "2", "--experiment", "few-labels"], ["--freeze-epochs", "transfer only"]),
    (["--encoder-lr-factor", "0.1"], ["--encoder-lr-factor", "transfer only"]),
    (["--no-fc", "--experiment", "conv", "--latent-dim", "10"], ["divisible by 4"]),
    (["--experiment", "naive", "--load", "figures/autoencoder_fc.pt"],
     ["--load", "naive", "--fc-weights"]),
    (["--experiment", "naive", "--resume"], ["--resume", "naive", "--fc-weights"]),
    (["--experiment", "conv", "--fc-weights", "figures/autoencoder_fc.pt"],
     ["--fc-weights", "not read by --experiment conv"]),
    (["--experiment", "transfer", "--classifier-weights", "figures/autoencoder_classifier.pt"],
     ["--classifier-weights", "not read by --experiment transfer"]),
])
def test_bad_flags_are_one_line_errors(extra, phrases):
    assert_one_line_error(run_script("autoencoder.py", *extra), *phrases)


def test_load_of_another_experiments_weights_is_refused(trained, synthetic_data, tmp_path):
    result = run_script("autoencoder.py", *quick_args(synthetic_data, tmp_path, "--experiment", "conv",
                                                      "--load", trained / "autoencoder_fc_e2_limit128.pt"))
    assert_one_line_error(result, "'autoencoder_fc'", "expected 'autoencoder_conv'")


def test_naive_and_normalized_generation_write_sample_quality(synthetic_data, cnn_weights, tmp_path):
    autoencoder.main(quick_args(synthetic_data, tmp_path, "--experiment", "fc"))
    for experiment in ("naive", "normalized"):
        autoencoder.main(quick_args(synthetic_data, tmp_path, "--experiment", experiment,
                                    "--cnn-weights", cnn_weights, *dependency_flags(experiment, tmp_path)))
    for run in ("autoencoder_naive_limit128", "autoencoder_normalized_e2_limit128"):
        final = metrics(tmp_path / f"{run}_metrics.json")["final"]
        assert final["frechet_distance"] > 0 and final["n_generated"] == 128, run


# --- the weights an experiment builds on ---------------------------------------------------------
def one_line_error(capsys, argv):
    """Run autoencoder.py in-process as `python autoencoder.py` does; return its one-line error."""
    with pytest.raises(SystemExit) as stop:
        common.run_main(autoencoder.main, [str(a) for a in argv])
    code = stop.value.code
    message = capsys.readouterr().err.strip() if isinstance(code, int) else str(code)
    assert code not in (0, None), message
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize("experiment,present,missing", [
    ("naive", [], "fc"),
    ("normalized", [], "fc"),
    ("classifier-decoder", [], "conv"),
    ("classifier-decoder", ["conv"], "classifier"),
    ("transfer", [], "conv"),
    ("transfer", ["conv"], "few-labels"),
])
def test_a_missing_dependency_is_one_line_naming_the_command_to_run_first(
        experiment, present, missing, trained, synthetic_data, tmp_path, capsys):
    for name in present:  # under the default name, where the dependency flag looks by default
        shutil.copy(trained / f"{run_of('--experiment', name)}.pt", tmp_path / f"{autoencoder.EXPERIMENTS[name].run}.pt")
    message = one_line_error(capsys, quick_args(synthetic_data, tmp_path, "--experiment", experiment))
    run = autoencoder.EXPERIMENTS[missing].run
    for phrase in (f"--{missing}-weights", str(tmp_path / f"{run}.pt"),
                   f"run `python autoencoder.py --experiment {missing} "):
        assert phrase in message, message
    assert not (tmp_path / f"{run}.pt").exists()  # nothing was trained behind the user's back
    assert not list(tmp_path.glob(f"{autoencoder.EXPERIMENTS[experiment].run}*"))


def test_an_explicit_dependency_flag_to_a_missing_file_is_one_line(synthetic_data, tmp_path, capsys):
    absent = tmp_path / "elsewhere" / "fc.pt"
    message = one_line_error(capsys, quick_args(synthetic_data, tmp_path, "--experiment", "naive",
                                                "--fc-weights", absent))
    assert "--fc-weights" in message and str(absent) in message and "--experiment fc" in message


def test_a_dependency_of_the_wrong_kind_is_refused(trained, synthetic_data, tmp_path, capsys):
    message = one_line_error(capsys, quick_args(synthetic_data, tmp_path, "--experiment", "transfer",
                                                "--conv-weights", trained / "autoencoder_classifier_e2_limit128.pt"))
    assert "--conv-weights" in message, message
    assert "holds 'autoencoder_classifier' weights, expected 'autoencoder_conv'" in message, message


def test_resume_without_a_checkpoint_is_one_line(synthetic_data, tmp_path, capsys):
    message = one_line_error(capsys, quick_args(synthetic_data, tmp_path, "--experiment", "conv",
                                                "--resume"))
    assert "--resume" in message and str(tmp_path / "autoencoder_conv_e2_limit128.ckpt") in message, message


# --- the training step against a hand-written step on its objective ------------------------------
# Each experiment's objective as its docstrings state it, written from the raw network outputs with
# torch primitives (not the script's loss functions): MSE and L1 "averaged over the pixels and over
# the batch", cross-entropy "-(1/B) Σ_b log softmax(logits_b)[y_b]". The normalised bottleneck is
# standardised by hand with the batch's mean and (biased) variance, BatchNorm's ε = 1e-5 under the
# root, as FCAutoencoder's docstring says training does; nothing else in these models depends on
# train/eval mode except the conv decoder's BatchNorm, which a train-mode forward covers.
def mse_by_hand(model, x, y):
    return (model(x) - x).pow(2).sum() / x.numel()  # x.numel() = B·784


def l1_by_hand(model, x, y):
    return (model(x) - x).abs().sum() / x.numel()


def normalized_mse_by_hand(model, x, y):
    h = model.encoder[:-1](x)                                            # (B, 2) before the BatchNorm
    code = (h - h.mean(0)) / (h.var(0, unbiased=False) + 1e-5).sqrt()   # each neuron standardised
    return (model.decoder(code) - x).pow(2).sum() / x.numel()


def cross_entropy_by_hand(model, x, y):
    log_probabilities = model(x).log_softmax(1)                         # (B, 10)
    return -log_probabilities.gather(1, y[:, None]).sum() / len(y)


def frozen_encoder(model):
    """classifier-decoder's model as run_classifier_decoder sets it up: the encoder fixed."""
    model.encoder.requires_grad_(False)
    return model


# flags -> (the model that experiment trains, its objective by hand)
STEPS = {
    "fc": (lambda: autoencoder.FCAutoencoder(), mse_by_hand),
    "normalized": (lambda: autoencoder.FCAutoencoder(normalize=True), normalized_mse_by_hand),
    "conv": (lambda: autoencoder.ConvAutoencoder(12), l1_by_hand),
    "conv --no-fc": (lambda: autoencoder.ConvAutoencoder(12, fc=False), l1_by_hand),
    "classifier": (lambda: autoencoder.Classifier(12), cross_entropy_by_hand),
    "classifier-decoder": (lambda: frozen_encoder(autoencoder.ConvAutoencoder(12)), l1_by_hand),
    "few-labels": (lambda: autoencoder.Classifier(12), cross_entropy_by_hand),
    "transfer": (lambda: autoencoder.Classifier(12), cross_entropy_by_hand),
}
LR, ENCODER_LR_FACTOR = 3e-3, 0.25  # not the defaults (1e-3, 1.0): a step that ignores one fails



def steps_by_hand(model, objective, x, y, lr_of, epochs):
    """`epochs` full-batch Adam steps on `objective` of a copy of `model`; lr_of(name, epoch)
    is each parameter's learning rate. Returns the copy's parameters and gradients after each
    step: [({name: value}, {name: grad})]."""
    model = copy.deepcopy(model).train()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    state, after = {}, []
    for epoch in range(1, epochs + 1):
        grads = dict(zip(trainable, torch.autograd.grad(objective(model, x, y), list(trainable.values()))))
        with torch.no_grad():
            stepped = adam_by_hand(list(trainable.values()), list(grads.values()), state,
                                   [lr_of(name, epoch) for name in trainable])
            for param, value in zip(trainable.values(), stepped):
                param.copy_(value)
        after.append(({n: p.detach().clone() for n, p in model.named_parameters()}, grads))
    return after


def steps_of_the_script(model, args, x, y, epochs):
    """The same steps through the script: make_optimizer, set_encoder_lr (transfer), train_epoch
    with this experiment's loss, as fit calls them. Returns [({name: value}, {name: grad})]."""
    transfer = args.experiment == "transfer"
    optimizer = autoencoder.make_optimizer(model, args, pretrained_encoder=transfer)
    after = []
    for epoch in range(1, epochs + 1):
        if transfer:
            autoencoder.set_encoder_lr(optimizer, args, epoch)
        autoencoder.train_epoch(model, optimizer, x, y, autoencoder.EXPERIMENTS[args.experiment].loss,
                                args, epoch, torch.Generator().manual_seed(0))
        after.append(({n: p.detach().clone() for n, p in model.named_parameters()},
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    return after


def tiny_batch():
    """4 images and labels in float64 (so the comparisons are exact to rounding)."""
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(4, 1, 28, 28, generator=generator, dtype=torch.float64),
            torch.tensor([3, 1, 4, 1]))


def assert_same_steps(script, by_hand):
    """Gradients and parameters equal after every step. The parameters to within LR × 1e-6: a
    conv bias right before a BatchNorm has a gradient of 0 up to rounding (~1e-17, the
    normalisation removes it), which Adam's g / (|g| + ε) blows up to ~1e-11."""
    for epoch, ((params, grads), (params_hand, grads_hand)) in enumerate(zip(script, by_hand), 1):
        assert set(grads) == set(grads_hand), f"epoch {epoch}: gradients of {set(grads) ^ set(grads_hand)}"
        for name in grads_hand:
            assert torch.allclose(grads[name], grads_hand[name], rtol=1e-6, atol=1e-12), (epoch, name)
        for name in params_hand:
            assert torch.allclose(params[name], params_hand[name], rtol=0, atol=LR * 1e-6), (epoch, name)


@pytest.mark.parametrize("flags", STEPS)
def test_one_training_step_is_adam_on_the_documented_objective(flags):
    """One step of train_epoch (a batch of 4 = --batch-size, so one batch) with the optimizer
    make_optimizer builds: the gradients equal those of the experiment's objective written by
    hand, and the parameters move as one hand-written Adam step with --lr 3e-3 moves them (the
    transfer encoder's at --lr × --encoder-lr-factor 0.25; classifier-decoder's frozen encoder
    not at all). A wrong loss kind, reduction, target or train/eval mode changes the gradients;
    an ignored --lr or a factor on the wrong group changes the update."""
    args = autoencoder.parse_args(["--experiment", *flags.split(), "--batch-size", "4", "--lr", str(LR),
                                   *(["--encoder-lr-factor", str(ENCODER_LR_FACTOR)]
                                     if flags == "transfer" else [])])
    build, objective = STEPS[flags]
    torch.manual_seed(0)
    model = build().double()
    x, y = tiny_batch()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}

    def lr_of(name, epoch):
        return LR * ENCODER_LR_FACTOR if flags == "transfer" and name.startswith("encoder.") else LR

    by_hand = steps_by_hand(model, objective, x, y, lr_of, epochs=1)
    script = steps_of_the_script(model, args, x, y, epochs=1)
    assert_same_steps(script, by_hand)
    moved = {n for n, p in script[0][0].items() if not torch.equal(p, initial[n])}
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    assert moved == expected  # every trainable parameter moves, nothing else


def test_freezing_holds_the_encoder_through_epoch_n_and_releases_it_at_n_plus_1():
    """transfer with --freeze-epochs 2 --encoder-lr-factor 0.25: in epochs 1 and 2 the pretrained
    encoder does not move while the head does; in epoch 3 both move, the encoder at --lr × 0.25.
    Three epochs (one full-batch step each) against hand-written Adam, whose moments keep
    accumulating the encoder's gradients while its learning rate is 0 (the docstring's
    "Adam's state stays aligned"); the gradients of every epoch also match, so no accumulation
    across steps either."""
    args = autoencoder.parse_args(["--experiment", "transfer", "--batch-size", "4", "--lr", str(LR),
                                   "--freeze-epochs", "2", "--encoder-lr-factor", str(ENCODER_LR_FACTOR)])
    torch.manual_seed(0)
    model = autoencoder.Classifier(12).double()
    x, y = tiny_batch()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}

    def lr_of(name, epoch):
        if name.startswith("encoder."):
            return 0.0 if epoch <= 2 else LR * ENCODER_LR_FACTOR
        return LR

    by_hand = steps_by_hand(model, cross_entropy_by_hand, x, y, lr_of, epochs=3)
    script = steps_of_the_script(model, args, x, y, epochs=3)
    assert_same_steps(script, by_hand)
    before = initial
    for epoch, (params, _) in enumerate(script, 1):
        moved = {n.split(".")[0] for n, p in params.items() if not torch.equal(p, before[n])}
        assert moved == ({"head"} if epoch <= 2 else {"encoder", "head"}), epoch
        before = params


def test_amp_runs_the_forward_pass_in_bfloat16():
    """--amp: train_epoch's forward pass runs under bf16 autocast (the first convolution's output
    is bfloat16), and in float32 without it; the weights stay float32 either way."""
    x, y = (t.float() if t.is_floating_point() else t for t in tiny_batch())
    for flags, dtype in (([], torch.float32), (["--amp"], torch.bfloat16)):
        args = autoencoder.parse_args(["--experiment", "conv", "--batch-size", "4", *flags])
        torch.manual_seed(0)
        model = autoencoder.ConvAutoencoder(12)
        seen = []
        model.encoder.net[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        autoencoder.train_epoch(model, autoencoder.make_optimizer(model, args), x, y, "l1", args, 1,
                                torch.Generator().manual_seed(0))
        assert seen == [dtype], flags
        assert all(p.dtype == torch.float32 for p in model.parameters())


class StopTraining(Exception):
    """Raised by the recording train_epoch once it has seen what a test needs."""


def record_training(monkeypatch, epochs=2):
    """Wrap train_epoch, the function fit calls each epoch: record what it is handed (the
    model, its state, which parameters train, the optimizer's learning rate per parameter, the
    data, the loss) and, through a forward pre-hook, every batch that reaches the model's input in
    training (train_epoch) and in eval mode (evaluate after epoch 1); stop the run at the entry
    of epoch `epochs`."""
    calls, inputs = [], []
    real_train_epoch = autoencoder.train_epoch

    def recording(model, optimizer, x, y, loss, args, epoch, generator):
        lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        calls.append({"epoch": epoch, "loss": loss, "x": x.cpu(), "y": y.cpu(),
                      "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                      "trainable": {n for n, p in model.named_parameters() if p.requires_grad},
                      "lr": {n: lrs.get(id(p)) for n, p in model.named_parameters()}})
        if epoch == 1:
            model.register_forward_pre_hook(lambda module, args_: inputs.append(
                (module.training, args_[0].min().item(), args_[0].max().item())))
        if len(calls) == epochs:
            raise StopTraining
        return real_train_epoch(model, optimizer, x, y, loss, args, epoch, generator)

    monkeypatch.setattr(autoencoder, "train_epoch", recording)
    return calls, inputs


@pytest.fixture(scope="module")
def unlike_datasets(tmp_path_factory):
    """A --data-dir whose synthetic Fashion-MNIST differs from its synthetic MNIST (other noise
    seeds), so a test sees which of the two an experiment reads."""
    root = tmp_path_factory.mktemp("unlike")
    write_mnist_like(root, "MNIST")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", 512, 3), ("t10k", 256, 4)):
        images, labels = synthetic_split(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


# the loss and data set each experiment's docstring names: assignment B's MSE on Fashion-MNIST,
# assignment E's mean L1 and cross-entropy on MNIST
DOCUMENTED_LOSS = {"fc": "mse", "normalized": "mse", "conv": "l1", "conv --no-fc": "l1",
                   "classifier": "ce", "classifier-decoder": "l1", "few-labels": "ce", "transfer": "ce"}
DOCUMENTED_DATASET = {"fc": "fashion-mnist", "normalized": "fashion-mnist"}  # the rest: mnist
# the pretrained encoder an experiment starts from: the dependency whose encoder it takes
PRETRAINED_ENCODER = {"classifier-decoder": "classifier", "transfer": "conv"}


@pytest.mark.parametrize("flags", STEPS)
def test_each_experiment_trains_the_documented_network_on_the_documented_data(
        flags, trained, unlike_datasets, tmp_path, monkeypatch):
    """What fit hands train_epoch, through main: the network of the module docstring, freshly
    initialised from the seed except the encoder it takes over (classifier-decoder's from the
    classifier, frozen; transfer's from the conv autoencoder, at lr 0 in epoch 1 with
    --freeze-epochs 1 and at --lr × --encoder-lr-factor in epoch 2); the documented loss;
    the documented data set's whole (--limit) training set, or its first 100 images with their
    own labels for few-labels and transfer; and, at the network's input, pixels in [0, 1] in training and in
    evaluation (the range the sigmoid decoders reproduce and the transfer encoder was trained on)."""
    experiment = flags.split()[0]
    extra = ["--lr", "2e-3", *(["--freeze-epochs", "1", "--encoder-lr-factor", "0.5"]
                               if experiment == "transfer" else [])]
    calls, inputs = record_training(monkeypatch)
    with pytest.raises(StopTraining):
        autoencoder.main(quick_args(unlike_datasets, tmp_path, "--experiment", *flags.split(), *extra,
                                    *dependency_flags(experiment, trained)))
    first, second = calls

    torch.manual_seed(0)  # --seed's default: the initial weights of a fresh model
    expected = STEPS[flags][0]().state_dict()
    if experiment in PRETRAINED_ENCODER:
        dependency = run_of("--experiment", PRETRAINED_ENCODER[experiment])
        weights = torch.load(trained / f"{dependency}.pt", weights_only=True)["models"]["model"]
        expected.update({k: v for k, v in weights.items() if k.startswith("encoder.")})
    assert first["state"].keys() == expected.keys()
    assert all(torch.equal(first["state"][k], expected[k].cpu()) for k in expected), flags

    names = set(first["lr"])
    encoder = {n for n in names if n.startswith("encoder.")}
    assert first["trainable"] == (names - encoder if experiment == "classifier-decoder" else names)
    for call, encoder_lr in zip(calls, (0.0, 2e-3 * 0.5)):  # transfer: frozen, then --lr × factor
        assert {call["lr"][n] for n in first["trainable"] - encoder} == {2e-3}, call["epoch"]
        if experiment == "transfer":
            assert {call["lr"][n] for n in encoder} == {encoder_lr}, call["epoch"]
        elif experiment != "classifier-decoder":
            assert {call["lr"][n] for n in encoder} == {2e-3}, call["epoch"]

    assert first["loss"] == second["loss"] == DOCUMENTED_LOSS[flags]
    dataset = DOCUMENTED_DATASET.get(experiment, "mnist")
    train_x, train_y = common.load_mnist_like(dataset, unlike_datasets, "cpu", 128)[0]
    n = autoencoder.N_LABELLED if experiment in ("few-labels", "transfer") else len(train_x)
    assert torch.equal(first["x"], train_x[:n]) and torch.equal(first["y"], train_y[:n])

    assert {training for training, _, _ in inputs} == {True, False}  # train_epoch and evaluate
    assert all(0.0 <= low and high <= 1.0 for _, low, high in inputs), inputs
    assert all(high > 0.5 for _, _, high in inputs), inputs  # scaled once by 1/255, not twice
