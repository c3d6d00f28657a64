"""vae.py: architectures, losses against independent computations, every mode with --load, bad input."""
import json
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import common
import vae
from conftest import (DEVICE, DEVICE_FLAGS, assert_one_line_error, count_reads, guard_host_copies,
                      kill_at_call, needs_bf16, run_script)


QUICK = "e2_limit128"  # the knobs of quick_args that differ from the defaults: in every run's name


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "128", *map(str, extra)]


def metrics(path):
    return json.loads(path.read_text())


def error_of(argv, capsys):
    """Run vae.main in this process and return its one-line error (a parser error or a fail)."""
    with pytest.raises(SystemExit) as stop:
        vae.main([str(a) for a in argv])
    code = stop.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err.strip()
    assert code not in (0, None) and "\n" not in message and "Traceback" not in message, message
    return message


# --- architecture --------------------------------------------------------------------------------
def test_conv_decoder_inverts_every_encoder_shape():
    model, x = vae.ConvVAE(), torch.zeros(3, 1, 28, 28)
    encoder_inputs = []
    for layer in model.encoder:
        if isinstance(layer, torch.nn.Conv2d):
            encoder_inputs.append(tuple(x.shape))
        x = layer(x)
    assert tuple(x.shape) == (3, 2048)
    mu, logvar = model.encode(torch.zeros(3, 1, 28, 28))
    assert mu.shape == logvar.shape == (3, 256)
    h, decoder_outputs = mu, []
    for layer in model.decoder:
        h = layer(h)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            decoder_outputs.append(tuple(h.shape))
    # the k-th transpose conv from the top produces what the k-th conv from the bottom consumed
    assert decoder_outputs == encoder_inputs[::-1] == [(3, 64, 7, 7), (3, 32, 14, 14), (3, 1, 28, 28)]


def test_mlp_vae_is_784_500_z_500_784():
    model = vae.MLPVAE(latent_dim=2)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linears]
    assert shapes == [(784, 500), (500, 2), (500, 2), (2, 500), (500, 784)]
    assert all(m.negative_slope == 0.01 for m in model.modules() if isinstance(m, torch.nn.LeakyReLU))
    logits, mu, logvar = model(torch.rand(4, 1, 28, 28), torch.Generator())
    assert logits.shape == (4, 1, 28, 28) and mu.shape == (4, 2)


def test_classifier_encoder_loads_into_the_vae_encoder():
    classifier, model = vae.MLPClassifier(), vae.MLPVAE(latent_dim=64)
    assert classifier(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    model.encoder.load_state_dict(classifier.encoder.state_dict())  # strict: same layout
    assert torch.equal(model.encoder[1].weight, classifier.encoder[1].weight)


# --- losses --------------------------------------------------------------------------------------
def test_closed_form_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(16, 8), torch.randn(16, 8)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = kl_divergence(q, p).sum(1).mean()  # summed over z, averaged over the batch
    assert vae.kl_divergence(mu, logvar).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reconstruction_losses_sum_pixels_and_average_the_batch():
    torch.manual_seed(0)
    logits, x = torch.randn(5, 1, 28, 28), torch.rand(5, 1, 28, 28)
    p = 1 / (1 + torch.exp(-logits.double()))
    bce = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum((1, 2, 3)).mean()
    mse = ((p - x) ** 2).sum((1, 2, 3)).mean()
    assert vae.reconstruction_loss(logits, x, "bce").item() == pytest.approx(bce.item(), rel=1e-5)
    assert vae.reconstruction_loss(logits, x, "mse").item() == pytest.approx(mse.item(), rel=1e-5)
    # the report's setup: PyTorch's default nn.MSELoss(), a mean over the batch and the pixels
    default_mse = torch.nn.MSELoss()(torch.sigmoid(logits), x)
    assert vae.reconstruction_loss(logits, x, "mse-mean").item() == pytest.approx(default_mse.item(), rel=1e-6)


def test_vae_loss_is_one_objective_for_training_and_evaluation():
    terms = vae.vae_loss(torch.tensor(10.0), torch.tensor(4.0), 0.25)
    assert terms["loss"].item() == 11.0 and terms["recon"].item() == 10.0 and terms["kl"].item() == 4.0
    args = vae.parse_args(["--arch", "mlp", "--kl-weight", "0.25"])
    split = vae.evaluate_vae(vae.MLPVAE(), torch.rand(30, 1, 28, 28), args)  # numbers, per example
    assert split["loss"] == split["recon"] + 0.25 * split["kl"]


def test_reparameterization_has_the_right_moments():
    mu, logvar = torch.full((200_000, 1), 3.0), torch.full((200_000, 1), 2 * torch.log(torch.tensor(0.5)))
    z = vae.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(3.0, abs=0.01)
    assert z.std().item() == pytest.approx(0.5, abs=0.01)


# --- devices, proven on PyTorch's meta device (shapes without values) ---------------------------
@pytest.mark.parametrize("model", [vae.ConvVAE(8), vae.MLPVAE(2), vae.MLPClassifier()],
                         ids=["ConvVAE", "MLPVAE", "MLPClassifier"])
def test_training_step_runs_on_the_device_alone(model, monkeypatch):
    """An epoch of each model's training loop with the model and the data on the meta device: a
    CPU tensor left in the step fails (meta and CPU tensors do not mix), so does an .item() (a
    meta tensor has no value to read). The CPU-drawn order and noise reach the device through
    common.to_device (pinned and non-blocking on CUDA), not through a .to() that makes the host
    wait."""
    meta = torch.device("meta")
    model = model.to(meta)
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.rand(8, 1, 28, 28, device=meta), torch.randint(0, 10, (8,), device=meta)
    args, generator = vae.parse_args(["--batch-size", "4"]), torch.Generator().manual_seed(0)
    copies = guard_host_copies(monkeypatch)
    if isinstance(model, vae.MLPClassifier):
        losses = {"ce": vae.train_classifier_epoch(model, optimizer, x, y, args, 1, generator)}
        assert copies == [(8,)]  # the order, once
    else:
        losses = vae.train_vae_epoch(model, optimizer, x, args, 1, generator)
        latent = model.to_mu.out_features
        assert copies == [(8,), (4, latent), (4, latent)]  # the order once, the noise every step
    assert all(v.device == meta and v.shape == (2,) for v in losses.values())
    assert all(p.grad.device == meta for p in model.parameters())


def test_evaluation_sums_on_the_device_and_reads_once(monkeypatch):
    torch.manual_seed(0)
    x, y = torch.rand(30, 1, 28, 28), torch.randint(0, 10, (30,))
    args = vae.parse_args(["--arch", "mlp"])
    reads = count_reads(monkeypatch)
    split = vae.evaluate_vae(vae.MLPVAE(), x, args, batch_size=10)  # three batches
    assert len(reads) == 1 and split["loss"] == split["recon"] + split["kl"]
    reads.clear()
    classifier = vae.MLPClassifier()
    measured = vae.evaluate_classifier(classifier, x, y, batch_size=10)
    assert len(reads) == 1
    monkeypatch.undo()
    logits = classifier(x)
    assert measured["acc"] == (logits.argmax(1) == y).sum().item() / 30  # a count: exact
    assert measured["ce"] == pytest.approx(vae.classification_loss(logits, y).item(), rel=1e-6)


# --- runs, each followed by --load ---------------------------------------------------------------
@pytest.mark.parametrize("arch, figures", [
    ("conv", ["loss", "reconstructions", "norms", "samples"]),
    ("mlp", ["loss", "reconstructions", "norms", "samples", "latent"]),
])
def test_vae_run_then_load(synthetic_data, tmp_path, arch, figures):
    run = f"vae_{arch}_{QUICK}"
    vae.main(quick_args(synthetic_data, tmp_path / "a", "--arch", arch))
    for name in [f"{run}_{f}.png" for f in figures] + [f"{run}.pt", f"{run}_metrics.json"]:
        assert (tmp_path / "a" / name).is_file(), name
    vae.main(quick_args(synthetic_data, tmp_path / "b", "--arch", arch, "--load", tmp_path / "a" / f"{run}.pt"))
    first, again = metrics(tmp_path / "a" / f"{run}_metrics.json"), metrics(tmp_path / "b" / f"{run}_metrics.json")
    assert again["final"] == first["final"] and again["history"] == first["history"]
    assert (tmp_path / "b" / f"{run}_samples.png").is_file()


def test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults():
    """The default command keeps the committed name (reproduction); a changed knob writes beside
    it; flags that do not change the result stay out; --load keeps the loaded file's name."""
    name = lambda *flags: vae.run_name(vae.parse_args(list(flags)))  # noqa: E731
    assert name() == name("--arch", "conv", "--epochs", "30", "--device", "cpu", "--out-dir", "x",
                          "--data-dir", "y", "--cnn-weights", "z.pt") == "vae_conv"
    assert name("--arch", "mlp", "--epochs", "100") == "vae_mlp"  # 100: --arch mlp's default
    assert name("--arch", "mlp", "--kl-weight", "0.5", "--epochs", "1", "--limit", "2000") == \
        "vae_mlp_e1_limit2000_kl0.5"
    assert name("--arch", "conv", "--epochs", "300", "--patience", "5") == "vae_conv_e300_patience5"
    assert name("--arch", "mlp", "--recon", "mse-mean", "--latent-dim", "64", "--epochs", "50") == \
        "vae_mlp_e50_mse-mean_z64"
    assert name("--experiment", "classifier", "--kl-weight", "0.5") == "vae_classifier"  # no KL there
    assert name("--experiment", "init-from-classifier", "--epochs", "50",
                "--classifier-weights", "c.pt") == "vae_mlp_init"  # 50: this experiment's default
    assert name("--arch", "mlp", "--load", "runs/vae_mlp_e5.pt", "--epochs", "9") == "vae_mlp_e5"


def test_a_quick_edit_writes_beside_the_default_run(synthetic_data, tmp_path):
    default_run = {tmp_path / f"vae_mlp{end}": end.encode()
                   for end in (".pt", "_metrics.json", "_samples.png", "_loss.png")}
    for path, content in default_run.items():
        path.write_bytes(content)
    vae.main(quick_args(synthetic_data, tmp_path, "--arch", "mlp", "--kl-weight", "0.5"))
    assert all(path.read_bytes() == content for path, content in default_run.items())
    assert (tmp_path / f"vae_mlp_{QUICK}_kl0.5.pt").is_file()


@needs_bf16
def test_amp_run_trains_with_finite_losses(synthetic_data, tmp_path):
    vae.main(quick_args(synthetic_data, tmp_path, "--arch", "mlp", "--epochs", "1", "--amp"))
    final = metrics(tmp_path / "vae_mlp_e1_amp_limit128_metrics.json")["final"]
    assert 0 < final["test_recon"] < float("inf") and final["test_kl"] >= 0


@pytest.mark.skipif(DEVICE != "cpu", reason="the bf16 check is the CPU's")
def test_a_bf16_run_reloads_exactly_on_a_cpu_without_bf16_units(synthetic_data, tmp_path,
                                                                 monkeypatch, capsys):
    """Trained with --amp where the CPU computes bf16; reloaded where it does not (the detection
    monkeypatched both ways, so this runs on any CPU): --load is not refused, says it evaluates
    in fp32, and gives the run's final numbers exactly (every evaluation runs in fp32)."""
    monkeypatch.setattr(common, "cpu_computes_bf16", lambda: True)
    vae.main(quick_args(synthetic_data, tmp_path / "a", "--arch", "mlp", "--epochs", "1", "--amp"))
    monkeypatch.setattr(common, "cpu_computes_bf16", lambda: False)
    capsys.readouterr()
    weights = tmp_path / "a" / "vae_mlp_e1_amp_limit128.pt"
    vae.main(quick_args(synthetic_data, tmp_path / "b", "--arch", "mlp", "--amp", "--load", weights))
    assert "was trained with --amp" in capsys.readouterr().out
    run = "vae_mlp_e1_amp_limit128_metrics.json"
    assert metrics(tmp_path / "b" / run)["final"] == metrics(tmp_path / "a" / run)["final"]


def test_kl_sweep_then_load(synthetic_data, tmp_path):
    """Each member is named as its single run would be (the β = 1 member is the plain quick run);
    the sweep's own files carry the sweep's name; a member's file also loads on its own."""
    sweep, members = f"vae_mlp_sweep_kl_{QUICK}", [f"vae_mlp_{QUICK}", f"vae_mlp_{QUICK}_kl0.25"]
    vae.main(quick_args(synthetic_data, tmp_path / "a", "--arch", "mlp", "--sweep-kl", "1,0.25"))
    first = metrics(tmp_path / "a" / f"{sweep}_metrics.json")
    assert list(first["final"]) == ["β = 1", "β = 0.25"]
    assert (tmp_path / "a" / f"{sweep}.png").is_file()
    assert all((tmp_path / "a" / f"{member}.pt").is_file() for member in members)
    vae.main(quick_args(synthetic_data, tmp_path / "b", "--arch", "mlp", "--sweep-kl", "1,0.25",
                        "--load", *[tmp_path / "a" / f"{member}.pt" for member in members]))
    assert metrics(tmp_path / "b" / f"{sweep}_metrics.json")["final"] == first["final"]
    for member in members:  # every member's metrics are redone too
        again, before = metrics(tmp_path / "b" / f"{member}_metrics.json"), metrics(tmp_path / "a" / f"{member}_metrics.json")
        assert again["final"] == before["final"] and again["history"] == before["history"]
    assert (tmp_path / "b" / f"{sweep}.png").is_file()
    # a member's weights are vae_mlp weights, whatever their name: they load alone too
    vae.main(quick_args(synthetic_data, tmp_path / "c", "--arch", "mlp", "--kl-weight", "0.25",
                        "--load", tmp_path / "a" / f"{members[1]}.pt"))
    alone = metrics(tmp_path / "c" / f"{members[1]}_metrics.json")["final"]
    assert {k: alone[k] for k in first["final"]["β = 0.25"]} == first["final"]["β = 0.25"]


def test_sweep_load_takes_one_file_per_member_in_order(synthetic_data, tmp_path, capsys):
    vae.main(quick_args(synthetic_data, tmp_path, "--arch", "mlp", "--epochs", "1", "--sweep-kl", "1,0.5"))
    kl1, kl05 = tmp_path / "vae_mlp_e1_limit128.pt", tmp_path / "vae_mlp_e1_limit128_kl0.5.pt"
    sweep = [*quick_args(synthetic_data, tmp_path / "o"), "--arch", "mlp", "--sweep-kl", "1,0.5"]
    assert "--load takes 2 weights files here" in error_of([*sweep, "--load", kl1], capsys)
    message = error_of([*sweep, "--load", kl05, kl1], capsys)  # both vae_mlp weights: the order is read from their args
    assert f"{kl05} was trained with --kl-weight 0.5, but stands for the sweep's --kl-weight 1" in message
    # a file whose name fits its place but whose run had another KL weight
    checkpoint = common.load_checkpoint(kl05, "vae_mlp")
    checkpoint["args"]["kl_weight"] = 0.25
    common.save_checkpoint(tmp_path / "relabelled.pt", **checkpoint)
    message = error_of([*sweep, "--load", kl1, tmp_path / "relabelled.pt"], capsys)
    assert f"{tmp_path / 'relabelled.pt'} was trained with --kl-weight 0.25" in message
    assert "the sweep's --kl-weight 0.5" in message
    # a sweep of one member takes its one file as a list too
    vae.main([*quick_args(synthetic_data, tmp_path / "one"), "--arch", "mlp", "--sweep-kl", "1", "--load", str(kl1)])
    assert list(metrics(tmp_path / "one" / f"vae_mlp_sweep_kl_{QUICK}_metrics.json")["final"]) == ["β = 1"]
    assert not list((tmp_path / "o").glob("*_metrics.json"))  # checked before any work


def test_sweep_resume_is_strict_for_every_member(synthetic_data, tmp_path, capsys):
    message = error_of([*quick_args(synthetic_data, tmp_path), "--arch", "mlp", "--sweep-kl", "1,0.5",
                        "--resume"], capsys)
    assert "--resume: no checkpoint at" in message and f"vae_mlp_{QUICK}.ckpt" in message


def test_load_help_says_one_file_per_model(capsys):
    with pytest.raises(SystemExit):
        vae.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "one per member for a sweep" in help_text and "two for init" in help_text


def test_latent_sweep(synthetic_data, tmp_path):
    vae.main(quick_args(synthetic_data, tmp_path, "--arch", "mlp", "--sweep-latent", "2,8"))
    final = metrics(tmp_path / f"vae_mlp_sweep_z_{QUICK}_metrics.json")["final"]
    assert list(final) == ["z = 2", "z = 8"]
    checkpoint = common.load_checkpoint(tmp_path / f"vae_mlp_{QUICK}_z8.pt", "vae_mlp")
    assert checkpoint["models"]["model"]["to_mu.weight"].shape == (8, 500)


def test_classifier_then_load(synthetic_data, tmp_path):
    run = f"vae_classifier_{QUICK}"
    vae.main(quick_args(synthetic_data, tmp_path / "a", "--arch", "mlp", "--experiment", "classifier"))
    first = metrics(tmp_path / "a" / f"{run}_metrics.json")
    assert first["final"]["test_acc"] > 0.3  # synthetic classes are easy; chance is 0.1
    assert (tmp_path / "a" / f"{run}_curves.png").is_file()
    vae.main(quick_args(synthetic_data, tmp_path / "b", "--arch", "mlp", "--experiment", "classifier",
                        "--load", tmp_path / "a" / f"{run}.pt"))
    assert metrics(tmp_path / "b" / f"{run}_metrics.json")["final"] == first["final"]


def test_init_from_classifier_needs_the_classifier_weights(synthetic_data, tmp_path, capsys):
    init = [*quick_args(synthetic_data, tmp_path), "--experiment", "init-from-classifier"]
    message = error_of(init, capsys)
    assert f"--classifier-weights: no file at {tmp_path / 'vae_classifier.pt'}" in message
    assert "run `python vae.py --experiment classifier" in message
    assert not (tmp_path / "vae_classifier.pt").exists()  # it never trains the classifier itself
    assert "--load takes 2 weights files here" in error_of([*init, "--load", tmp_path / "a.pt"], capsys)


def test_init_from_classifier_then_load(synthetic_data, tmp_path):
    vae.main(quick_args(synthetic_data, tmp_path / "a", "--arch", "mlp", "--experiment", "classifier"))
    classifier_weights = tmp_path / "a" / f"vae_classifier_{QUICK}.pt"
    classifier = common.load_checkpoint(classifier_weights, "vae_classifier")
    # a learning rate so small that training cannot move the weights far from where they started
    init = ["--experiment", "init-from-classifier", "--lr", "1e-9"]
    vae.main(quick_args(synthetic_data, tmp_path / "a", *init, "--classifier-weights", classifier_weights))
    knobs = "e2_lr1e-09_limit128"  # the --classifier-weights path stays out of the names
    summary = metrics(tmp_path / "a" / f"vae_mlp_init_{knobs}_metrics.json")["final"]
    assert set(summary) == {"classifier", "random"}
    for start in ("classifier", "random"):  # the training numbers of the last epoch, as recorded
        history = metrics(tmp_path / "a" / f"vae_mlp_init_{start}_{knobs}_metrics.json")["history"]
        assert summary[start]["train_recon"] == history[-1]["train_recon"]
        assert summary[start]["train_kl"] == history[-1]["train_kl"]
    assert (tmp_path / "a" / f"vae_mlp_init_{knobs}.png").is_file()
    assert (tmp_path / "a" / f"vae_mlp_init_{knobs}_samples.png").is_file()
    # the classifier-initialised VAE really started from the classifier's encoder; the other did not
    start = classifier["models"]["model"]["encoder.1.weight"]
    weights = {s: common.load_checkpoint(tmp_path / "a" / f"vae_mlp_init_{s}_{knobs}.pt", f"vae_mlp_init_{s}")
               ["models"]["model"]["encoder.1.weight"] for s in ("classifier", "random")}
    moved = {s: (w - start).abs().max().item() for s, w in weights.items()}
    # (the random start is the classifier's own initialisation, same seed, so the classifier's
    # two epochs of training are what sets it apart)
    assert moved["classifier"] < 1e-6 < 1e-4 < moved["random"], moved
    vae.main(quick_args(synthetic_data, tmp_path / "b", *init, "--load",
                        *[tmp_path / "a" / f"vae_mlp_init_{s}_{knobs}.pt" for s in ("classifier", "random")]))
    assert metrics(tmp_path / "b" / f"vae_mlp_init_{knobs}_metrics.json")["final"] == summary


def test_loss_figures_state_units_the_objective_and_which_runs_collapsed(tmp_path, monkeypatch):
    """plot_loss_curves: units on the y labels, the loss recon + β·KL as its own panel, legends
    under the axes, the KL range from 0, and a caption naming the runs whose KL collapsed
    (issue 26)."""
    def run(kl):
        return SimpleNamespace(history=[{"epoch": e, "train_recon": 250.0, "test_recon": 252.0,
                                         "train_kl": kl, "test_kl": kl} for e in (1, 2)])
    runs = {"β = 1": run(1e-6), "β = 0.5": run(2e-6), "β = 0.01": run(6.0)}
    drawn = {}
    monkeypatch.setattr(common, "plot_panels",
                        lambda path, panels, **options: drawn.update(options, panels=panels))
    vae.plot_loss_curves(tmp_path / "loss.png", runs, "title", recon="bce", splits=("train", "test"),
                         kl_weight=0.5, caption=vae.collapse_caption(runs))
    recon, kl, loss = drawn["panels"]
    assert all("nats per image" in label for label in (recon, kl, loss))
    assert drawn["panels"][loss]["β = 0.01, train"][1] == [250.0 + 0.5 * 6.0] * 2
    assert drawn["legend_below"] and drawn["ylims"][kl][0] <= 0 < 6.0 < drawn["ylims"][kl][1]
    assert drawn["caption"].split(":")[0] == "β = 1, β = 0.5"  # the two collapsed runs, not β = 0.01
    assert vae.collapse_caption({"β = 1": run(1e-6), "β = 0.01": run(6.0)}) is None  # one alone


def test_encoder_copy_is_exact(synthetic_data, tmp_path, monkeypatch):
    """The init experiment's VAE encoder equals the classifier's before its first step, every
    tensor of it (weights and biases), and nothing else is copied: the rest of that VAE equals
    the random-start VAE, built from the same seed."""
    vae.main(quick_args(synthetic_data, tmp_path / "c", "--arch", "mlp", "--experiment", "classifier"))
    seen = []
    real_fit = vae.fit_vae

    def spy(model, *args, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(vae, "fit_vae", spy)
    without_figures(monkeypatch)
    vae.main(quick_args(synthetic_data, tmp_path, "--arch", "mlp", "--experiment", "init-from-classifier",
                        "--classifier-weights", tmp_path / "c" / f"vae_classifier_{QUICK}.pt"))
    classifier = common.load_checkpoint(tmp_path / "c" / f"vae_classifier_{QUICK}.pt", "vae_classifier")["models"]["model"]
    # seen[0] is the classifier-initialised VAE, seen[1] the random one
    from_classifier, from_random = seen
    encoder_keys = [k for k in from_classifier if k.startswith("encoder.")]
    assert encoder_keys == ["encoder.1.weight", "encoder.1.bias"]
    for key in encoder_keys:
        assert torch.equal(from_classifier[key], classifier[key])
        assert not torch.equal(from_random[key], classifier[key])
    for key in from_classifier.keys() - set(encoder_keys):  # to_mu, to_logvar, decoder
        assert torch.equal(from_classifier[key], from_random[key]), key


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, phrase", [
    (["--kl-weight", "-1"], "argument --kl-weight: must be >= 0, got -1"),
    (["--sweep-kl", "1,abc"], "argument --sweep-kl: expected a number, got 'abc'"),
    (["--latent-dim", "0"], "argument --latent-dim: must be > 0, got 0"),
    (["--arch", "conv", "--experiment", "classifier"], "--experiment classifier uses the MLP encoder"),
    (["--sweep-kl", "1", "--sweep-latent", "2"], "not allowed with argument"),
    (["--sweep-kl", "1,0.5,1"], "argument --sweep-kl: lists a value twice"),
    (["--sweep-latent", "2,0"], "argument --sweep-latent: must be > 0, got 0"),
])
def test_bad_flags_are_refused(flags, phrase, tmp_path):
    assert_one_line_error(run_script("vae.py", "--out-dir", tmp_path, *flags), phrase)


def test_load_of_cnn_weights_is_refused(synthetic_data, tmp_path):
    weights = tmp_path / "cnn.pt"
    common.save_checkpoint(weights, "cnn", models={})
    result = run_script("vae.py", *quick_args(synthetic_data, tmp_path / "out"), "--load", weights)
    assert_one_line_error(result, "holds 'cnn' weights, expected 'vae_conv'")


def test_resume_after_a_kill_matches_an_uninterrupted_run(synthetic_data, tmp_path, monkeypatch):
    vae.main(quick_args(synthetic_data, tmp_path / "whole", "--arch", "mlp", "--epochs", "3"))
    kill_at_call(monkeypatch, vae, "train_vae_epoch", 3)
    with pytest.raises(KeyboardInterrupt):
        vae.main(quick_args(synthetic_data, tmp_path / "split", "--arch", "mlp", "--epochs", "3"))
    monkeypatch.undo()
    vae.main(quick_args(synthetic_data, tmp_path / "split", "--arch", "mlp", "--epochs", "3", "--resume"))
    whole = metrics(tmp_path / "whole" / "vae_mlp_e3_limit128_metrics.json")
    split = metrics(tmp_path / "split" / "vae_mlp_e3_limit128_metrics.json")
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(split["history"]) == strip(whole["history"]) and split["final"] == whole["final"]


def test_vae_metrics_hold_the_sample_quality_of_prior_samples(synthetic_data, cnn_weights, tmp_path):
    vae.main(quick_args(synthetic_data, tmp_path, "--arch", "mlp", "--cnn-weights", cnn_weights))
    final = metrics(tmp_path / f"vae_mlp_{QUICK}_metrics.json")["final"]
    assert final["frechet_distance"] > 0 and final["n_generated"] == 128
    assert 0 <= final["class_entropy_nats"] <= 2.31


# --- the training step against a hand-written step on its objective ------------------------------
SHUFFLE_SEED = 5  # its randperm(4) is not the identity, so a target taken in the wrong order fails


def vae_objective_by_hand(model, x, args, generator):
    """The module's objective, loss = recon + kl_weight·KL per example averaged over the batch,
    written again from the networks' raw outputs: BCE from F.logsigmoid, the squared error from
    the sigmoid, the KL from torch.distributions. Random numbers are drawn in the order the step
    draws them: the batch order (randperm), then ε of the batch's shape."""
    x = x[torch.randperm(len(x), generator=generator)]  # the one batch, in the step's order
    h = model.encoder(x)
    mu, sigma = model.to_mu(h), torch.exp(0.5 * model.to_logvar(h))
    logits = model.decoder(mu + sigma * torch.randn(mu.shape, generator=generator))
    if args.recon == "bce":
        per_pixel = -(x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits))
    else:
        per_pixel = (torch.sigmoid(logits) - x) ** 2
    recon = per_pixel.sum((1, 2, 3)) / (784 if args.recon == "mse-mean" else 1)  # (B,)
    kl = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(1)                # (B,)
    return (recon + args.kl_weight * kl).mean()


def gradients_by_hand(loss, model):
    """{name: ∂loss/∂parameter}, zero for a parameter the loss does not reach."""
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g
            for (name, p), g in zip(model.named_parameters(), grads)}


def assert_step_gradients_equal(train_step, model, expected):
    """Run `train_step(optimizer)` with a plain SGD of learning rate 0, which leaves the weights
    where they are and the gradients of the step's own loss in .grad, and compare those with
    `expected` ({name: gradient})."""
    train_step(torch.optim.SGD(model.parameters(), lr=0.0))
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("arch, recon", [("mlp", "bce"), ("mlp", "mse"), ("mlp", "mse-mean"),
                                         ("conv", "bce"), ("conv", "mse")])
def test_vae_step_descends_the_documented_objective(arch, recon):
    """One step of train_vae_epoch (the function fit_vae's loop calls) on 4 images in [0, 1] at
    --kl-weight 0.3 and --latent-dim 3 gives every parameter the gradient of the docstring's
    objective computed by hand: a step that ignores the KL weight or --recon, samples ε from
    another stream than the generator, scales the images or reconstructs another image fails."""
    torch.manual_seed(0)
    args = vae.parse_args(["--arch", arch, "--recon", recon, "--kl-weight", "0.3",
                           "--latent-dim", "3", "--batch-size", "4"])
    model, x = vae.build_vae(args), torch.rand(4, 1, 28, 28)
    assert model.to_mu.out_features == 3  # --latent-dim reaches the model
    expected = gradients_by_hand(
        vae_objective_by_hand(model, x, args, torch.Generator().manual_seed(SHUFFLE_SEED)), model)
    assert_step_gradients_equal(lambda optimizer: vae.train_vae_epoch(
        model, optimizer, x, args, 1, torch.Generator().manual_seed(SHUFFLE_SEED)), model, expected)


def test_classifier_step_descends_the_cross_entropy():
    """One step of train_classifier_epoch on 4 labelled images gives the gradient of
    -(1/B) Σ log softmax(head(encoder(x)))[y], written with log_softmax and gather; the batch
    is shuffled (not the identity order), so labels taken in another order than their images fail."""
    torch.manual_seed(0)
    args = vae.parse_args(["--experiment", "classifier", "--batch-size", "4"])
    model, x, y = vae.MLPClassifier(), torch.rand(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    assert not torch.equal(torch.randperm(4, generator=torch.Generator().manual_seed(SHUFFLE_SEED)),
                           torch.arange(4))
    log_probs = F.log_softmax(model.head(model.encoder(x)), dim=1)
    expected = gradients_by_hand(-log_probs.gather(1, y[:, None]).mean(), model)
    assert_step_gradients_equal(lambda optimizer: vae.train_classifier_epoch(
        model, optimizer, x, y, args, 1, torch.Generator().manual_seed(SHUFFLE_SEED)), model, expected)


def without_figures(monkeypatch):
    """Figures are not what these tests check and cost most of a tiny run's time: each is closed
    unwritten."""
    monkeypatch.setattr(common, "save_figure", lambda fig, path: plt.close(fig))


class OptimizerBuilt(Exception):
    """Raised by the spy on torch.optim.Adam: the optimizer is what the test wanted, not the run."""


def spy_on_adam(monkeypatch):
    """Replace torch.optim.Adam by a recorder that stops the caller right after the call; returns
    the list of (parameters, lr, other settings) it was called with. Its lr defaults to Adam's
    own default, so a call that leaves out --lr records 0.001."""
    calls = []

    def recorder(params, lr=1e-3, **settings):
        calls.append((list(params), lr, settings))
        raise OptimizerBuilt

    monkeypatch.setattr(torch.optim, "Adam", recorder)
    return calls


@pytest.mark.parametrize("experiment", ["vae", "classifier"])
def test_fit_builds_plain_adam_over_every_parameter_at_the_set_lr(experiment, monkeypatch, tmp_path):
    """fit_vae and fit_classifier train every parameter of their model with Adam at --lr (here
    0.0123, not the default), default betas and no weight decay."""
    args = vae.parse_args(["--arch", "mlp", "--experiment", experiment, "--lr", "0.0123"])
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    calls = spy_on_adam(monkeypatch)
    with pytest.raises(OptimizerBuilt):
        if experiment == "vae":
            model = vae.MLPVAE()
            vae.fit_vae(model, ((x, y), (x, y)), args, tmp_path / "vae_mlp", "vae_mlp",
                        torch.Generator(), torch.zeros(2, 2))
        else:
            model = vae.MLPClassifier()
            vae.fit_classifier(model, ((x, y), (x, y)), args, tmp_path / vae.CLASSIFIER, torch.Generator())
    [(params, lr, settings)] = calls
    assert [id(p) for p in params] == [id(p) for p in model.parameters()]
    assert lr == 0.0123 and settings == {}


@pytest.mark.parametrize("flags, members", [
    (["--sweep-kl", "0.3,2", "--kl-weight", "0.7", "--latent-dim", "4"], [(0.3, 4), (2.0, 4)]),
    (["--sweep-latent", "3,5", "--kl-weight", "0.7", "--latent-dim", "4"], [(0.7, 3), (0.7, 5)]),
])
def test_each_sweep_member_trains_with_its_own_value(flags, members, synthetic_data, tmp_path, monkeypatch):
    """The step of each sweep member sees that member's KL weight (or latent size, in its model
    and in its args) and the base value of the other knob, never the base value of the swept one."""
    seen, real_train_epoch = [], vae.train_vae_epoch

    def recording(model, optimizer, x, args, epoch, generator):
        seen.append((args.kl_weight, args.latent_dim, model.to_mu.out_features))
        return real_train_epoch(model, optimizer, x, args, epoch, generator)

    monkeypatch.setattr(vae, "train_vae_epoch", recording)
    without_figures(monkeypatch)
    vae.main(["--data-dir", str(synthetic_data), "--out-dir", str(tmp_path), *DEVICE_FLAGS,
              "--epochs", "1", "--limit", "16", "--arch", "mlp", *flags])
    assert seen == [(kl_weight, latent, latent) for kl_weight, latent in members]


@pytest.mark.parametrize("flags", [["--arch", "mlp"], ["--arch", "conv", "--latent-dim", "4"],
                                   ["--experiment", "classifier"]], ids=["mlp", "conv", "classifier"])
def test_images_reach_the_encoder_in_0_1_and_are_their_own_target(flags, synthetic_data, tmp_path, monkeypatch):
    """At the encoder's input, in training and in evaluation, the images are in [0, 1] (the
    range the Bernoulli decoder's targets must have), not rescaled to [-1, 1] nor divided by 255
    twice (the synthetic squares are brighter than 0.5); every reconstruction loss compares the
    decoded image with the very batch the encoder has just seen."""
    encoder_inputs, pairs = [], []

    def record_input(module, inputs):
        encoder_inputs.append(inputs[0].detach().clone())

    real_build_vae, real_classifier = vae.build_vae, vae.MLPClassifier
    real_reconstruction_loss = vae.reconstruction_loss

    def build_vae(args):
        model = real_build_vae(args)
        model.encoder.register_forward_pre_hook(record_input)
        return model

    def classifier():
        model = real_classifier()
        model.encoder.register_forward_pre_hook(record_input)
        return model

    def reconstruction_loss(logits, x, kind):
        pairs.append((encoder_inputs[-1], x.detach().clone()))
        return real_reconstruction_loss(logits, x, kind)

    monkeypatch.setattr(vae, "build_vae", build_vae)
    monkeypatch.setattr(vae, "MLPClassifier", classifier)
    monkeypatch.setattr(vae, "reconstruction_loss", reconstruction_loss)
    without_figures(monkeypatch)
    vae.main(["--data-dir", str(synthetic_data), "--out-dir", str(tmp_path), *DEVICE_FLAGS,
              "--epochs", "1", "--limit", "16", "--batch-size", "8", *flags])
    assert len(encoder_inputs) >= 3  # two training batches and the evaluations
    for images in encoder_inputs:
        assert images.min() >= 0 and 0.5 < images.max() <= 1
    if "classifier" not in flags:
        assert len(pairs) >= 3  # two training batches and the evaluations
        assert all(torch.equal(seen, target) for seen, target in pairs)


def test_replot_redraws_the_init_comparison_from_its_two_metrics_files(tmp_path, monkeypatch):
    """--replot CLASSIFIER_START RANDOM_START: no data, no model; the loss figure of the
    init-from-classifier comparison from the two runs' histories (labelled in that order), with
    the KL a second time on an axis fitted to the curves (the first starts at 0), and the recon
    loss, β and z of the runs' own metrics whatever the command line says; anything but two
    metrics files of such runs is one line."""
    def metrics(path, kl):
        history = [{"epoch": e, "train_recon": 250.0, "test_recon": 252.0, "train_kl": kl + e / 10,
                    "test_kl": kl, "seconds": 1.0} for e in (1, 2)]
        path.write_text(json.dumps({"args": {"recon": "mse", "kl_weight": 0.5, "latent_dim": 2, "epochs": 2},
                                    "wall_seconds": 2.0, "history": history, "final": {}}))
        return path
    drawn = {}
    monkeypatch.setattr(common, "plot_panels", lambda path, panels, **options: drawn.update(options, path=path, panels=panels))
    monkeypatch.setattr(common, "load_mnist_like", lambda *a, **k: pytest.fail("--replot read the data"))
    vae.main(["--experiment", "init-from-classifier", "--out-dir", str(tmp_path), "--replot",
              str(metrics(tmp_path / "a_metrics.json", 6.4)), str(metrics(tmp_path / "b_metrics.json", 6.5))])
    recon, kl, loss, zoomed = drawn["panels"]
    assert drawn["panels"][zoomed] == drawn["panels"][kl] and "zoomed" in zoomed
    assert kl in drawn["ylims"] and zoomed not in drawn["ylims"]
    assert drawn["panels"][kl]["encoder from the classifier, train"][1] == pytest.approx([6.5, 6.6])
    assert drawn["panels"][kl]["random init, test"][1] == [6.5, 6.5]
    assert loss.startswith("loss = recon + 0.5·KL") and "z = 2" in drawn["title"]
    assert drawn["path"] == tmp_path / "vae_mlp_init_e2_mse_kl0.5.png"
    assert_one_line_error(run_script("vae.py", "--experiment", "init-from-classifier", "--replot",
                                     str(tmp_path / "none.json"), str(tmp_path / "b_metrics.json")),
                          "--replot: no metrics file at")
    assert_one_line_error(run_script("vae.py", "--replot", "x", "y"), "--replot redraws the init-from-classifier comparison")
