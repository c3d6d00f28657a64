"""joint.py: the joint VAE-classifier and the pretrain-then-classify alternative."""
import copy
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import common
import joint
import vae
from conftest import (DEVICE_FLAGS, assert_one_line_error, count_reads, guard_host_copies, kill_at_call,
                      run_script)


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "128", *map(str, extra)]


QUICK = "_e2_limit128"  # the knobs quick_args changes, which every run name it trains carries


def final(path):
    return json.loads(path.read_text())["final"]


def error_of(argv, capsys):
    """Run joint.main in this process and return its one-line error (a parser error or a fail)."""
    with pytest.raises(SystemExit) as stop:
        joint.main([str(a) for a in argv])
    code = stop.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err.strip()
    assert code not in (0, None) and "\n" not in message and "Traceback" not in message, message
    return message


def test_vae_py_weights_fit_the_joint_models_vae():
    reference = vae.ConvVAE(latent_dim=256)
    model = joint.JointVAE(latent_dim=256)
    model.vae.load_state_dict(reference.state_dict())  # strict: same names and shapes
    assert model.classify(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert model.head.in_features == 256  # the softmax layer reads the encoding μ


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros(7, 5), torch.ones(7, 5))
    assert joint.kl_divergence(mu, logvar).item() == pytest.approx(
        kl_divergence(q, p).sum(1).mean().item(), rel=1e-5)


def test_joint_loss_weights_each_term():
    torch.manual_seed(0)
    model, x, y = joint.JointVAE(8), torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    args = joint.parse_args(["--ce-weight", "2", "--recon-weight", "0.5", "--kl-weight", "3"])
    terms = joint.joint_terms(model, x, y, torch.Generator().manual_seed(0), args)
    expected = 2 * terms["ce"] + 0.5 * terms["recon"] + 3 * terms["kl"]
    assert terms["total"].item() == pytest.approx(expected.item())
    # the classification term reads the mean μ, not a sample
    assert terms["ce"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(model.classify(x), y).item())


# --- devices, proven on PyTorch's meta device (shapes without values) ---------------------------
@pytest.mark.parametrize("loss_terms", [joint.joint_terms, joint.classifier_terms])
def test_training_step_runs_on_the_device_alone(loss_terms, monkeypatch):
    """An epoch of fit's loop with the JointVAE and the data on the meta device: a CPU tensor left
    in the step fails (meta and CPU tensors do not mix), so does an .item() (a meta tensor has no
    value to read). The CPU-drawn order and noise reach the device through common.to_device
    (pinned and non-blocking on CUDA), not through a .to() that makes the host wait."""
    meta = torch.device("meta")
    model = joint.JointVAE(8).to(meta)
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.rand(8, 1, 28, 28, device=meta), torch.randint(0, 10, (8,), device=meta)
    args = joint.parse_args(["--batch-size", "4"])
    copies = guard_host_copies(monkeypatch)
    losses = joint.train_epoch(model, loss_terms, optimizer, x, y, args, "epoch 1",
                               torch.Generator().manual_seed(0))
    assert all(v.device == meta and v.shape == (2,) for v in losses.values())
    if loss_terms is joint.joint_terms:
        assert copies == [(8,), (4, 8), (4, 8)]  # the order once, the noise every step
        assert all(p.grad.device == meta for p in model.parameters())
    else:
        assert copies == [(8,)]  # no sampling: the classifier reads the mean μ


def test_evaluation_sums_on_the_device_and_reads_once(monkeypatch):
    torch.manual_seed(0)
    model, x, y = joint.JointVAE(8), torch.rand(30, 1, 28, 28), torch.randint(0, 10, (30,))
    args = joint.parse_args([])
    reads = count_reads(monkeypatch)
    measured = joint.evaluate(model, joint.joint_terms, x, y, args, batch_size=10)  # three batches
    assert len(reads) == 1 and list(measured) == ["ce", "recon", "kl", "total", "acc"]
    monkeypatch.undo()
    whole = joint.joint_terms(model, x, y, torch.Generator().manual_seed(args.seed), args)
    for name, value in whole.items():  # the same noise in three batches as in one
        assert measured[name] == pytest.approx(value.item(), rel=1e-5)
    assert measured["acc"] == (model.classify(x).argmax(1) == y).sum().item() / 30


def test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults():
    def names(*flags):
        args = joint.parse_args([str(f) for f in flags])
        return [*joint.model_names(args).values(), joint.run_name(args, "joint_comparison")]

    # the README's default commands rewrite the committed files (reproduction)
    assert names() == names("--mode", "pretrain") == [
        "joint", "joint_pretrain_frozen", "joint_pretrain_finetuned", "joint_comparison"]
    # a joint-loss knob names the joint model and the comparison, never the pretrained classifiers
    assert names("--kl-weight", 0.5, "--recon", "mse") == [
        "joint_kl0.5_mse", "joint_pretrain_frozen", "joint_pretrain_finetuned", "joint_comparison_kl0.5_mse"]
    assert names("--mode", "pretrain", "--epochs", 5, "--latent-dim", 32)[1:3] == [
        "joint_pretrain_frozen_e5_z32", "joint_pretrain_finetuned_e5_z32"]
    assert names("--mode", "pretrain", "--vae-weights", "v/vae_conv_e300.pt")[1] == "joint_pretrain_frozen_vae_conv_e300"
    # flags that change no number stay out; a loaded file keeps its own name
    assert names("--device", "cpu", "--out-dir", "o", "--data-dir", "d", "--vae-weights", "o/vae_conv.pt")[0] == "joint"
    assert names("--mode", "pretrain", "--load", "a/f.pt", "b/t.pt")[1:3] == ["f", "t"]


def test_joint_run_then_load(synthetic_data, tmp_path):
    joint.main(quick_args(synthetic_data, tmp_path / "a"))
    for name in (f"joint{QUICK}.pt", f"joint{QUICK}_metrics.json", f"joint{QUICK}_accuracy.png",
                 f"joint{QUICK}_loss.png", f"joint_comparison{QUICK}.png", f"joint_comparison{QUICK}.json"):
        assert (tmp_path / "a" / name).is_file(), name
    joint.main(quick_args(synthetic_data, tmp_path / "b", "--load", tmp_path / "a" / f"joint{QUICK}.pt"))
    assert final(tmp_path / "b" / f"joint{QUICK}_metrics.json") == final(tmp_path / "a" / f"joint{QUICK}_metrics.json")


def test_replot_redraws_a_runs_curves_from_its_metrics_alone(synthetic_data, tmp_path):
    """For a run whose weights are not kept: --replot <run>_metrics.json draws its loss and
    accuracy figures byte for byte as the run drew them, with no data and no weights, and takes
    the knobs the figures name (--recon, --ce-weight) from the run, not the command line."""
    joint.main(quick_args(synthetic_data, tmp_path / "a", "--ce-weight", "3"))
    run = f"joint{QUICK}_ce3"
    joint.main(["--replot", str(tmp_path / "a" / f"{run}_metrics.json"), "--out-dir", str(tmp_path / "b"),
                "--data-dir", str(tmp_path / "no_data_here"), *DEVICE_FLAGS])
    for figure in (f"{run}_loss.png", f"{run}_accuracy.png"):
        assert (tmp_path / "b" / figure).read_bytes() == (tmp_path / "a" / figure).read_bytes(), figure
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"{run}_accuracy.png", f"{run}_loss.png"]
    refused = run_script("joint.py", "--replot", tmp_path / "a" / f"{run}_metrics.json", "--mode", "pretrain")
    assert_one_line_error(refused, "--replot redraws one joint run from its metrics file")
    missing = run_script("joint.py", "--replot", tmp_path / "a" / "nothing_metrics.json", "--out-dir", tmp_path / "c")
    assert_one_line_error(missing, "--replot: no metrics file at")


def test_sparse_evaluations_are_points_and_the_comparison_starts_at_zero(synthetic_data, tmp_path,
                                                                         monkeypatch):
    """Issue 26: accuracies and test losses, measured only every --eval-every epochs, are drawn as
    points (a line between two of them draws a shape nothing measured), the per-epoch train means
    as a line; the comparison's bars start at 0 (a cut axis makes small gaps look large)."""
    drawn = {}  # {file name: ({(curve label, line style)}, the first axis's y range)}

    def record(fig, path):
        curves = {(line.get_label(), line.get_linestyle()) for ax in fig.axes for line in ax.get_lines()}
        drawn[Path(path).name] = curves, fig.axes[0].get_ylim()
        plt.close(fig)

    monkeypatch.setattr(common, "save_figure", record)
    joint.main(quick_args(synthetic_data, tmp_path))
    assert drawn[f"joint{QUICK}_loss.png"][0] == {("train (epoch mean)", "-"), ("test", "None")}
    assert drawn[f"joint{QUICK}_accuracy.png"][0] == {("train", "None"), ("test", "None")}
    assert drawn[f"joint_comparison{QUICK}.png"][1] == (0, 1)


@pytest.mark.slow
def test_ce_sweep_trains_one_model_per_weight_then_load(synthetic_data, tmp_path, capsys):
    cnn_metrics = tmp_path / "cnn_metrics.json"
    cnn_metrics.write_text(json.dumps({"args": {"weight_decay": 0.0, "schedule": "constant", "lr": 1e-3,
                                                "augment": False}, "final": {"test_acc": 0.9}}))
    joint.main(quick_args(synthetic_data, tmp_path / "a", "--sweep-ce", "1,100", "--cnn-metrics", cnn_metrics))
    sweep = json.loads((tmp_path / "a" / f"joint_sweep_ce{QUICK}.json").read_text())
    assert list(sweep) == ["1", "100"] and (tmp_path / "a" / f"joint_sweep_ce{QUICK}.png").is_file()
    for weight in ("1", "100"):  # each member named after its knobs, its CE weight always
        record = json.loads((tmp_path / "a" / f"joint{QUICK}_ce{weight}_metrics.json").read_text())
        assert record["args"]["ce_weight"] == float(weight) and record["final"] == sweep[weight]
        # the objective the member trained on: weight·CE + recon + KL, from its own terms
        last = record["history"][-1]
        assert last["test_total"] == pytest.approx(
            float(weight) * last["test_ce"] + last["test_recon"] + last["test_kl"], rel=1e-5)
    members = [tmp_path / "a" / f"joint{QUICK}_ce{weight}.pt" for weight in (1, 100)]
    joint.main(quick_args(synthetic_data, tmp_path / "b", "--sweep-ce", "1,100", "--load", *members))
    assert json.loads((tmp_path / "b" / f"joint_sweep_ce{QUICK}.json").read_text()) == sweep
    assert "--load takes 2 weights files" in error_of(quick_args(synthetic_data, tmp_path / "c", "--sweep-ce", "1,100",
                                              "--load", members[0]), capsys)
    assert "needs --mode joint" in error_of(["--mode", "pretrain", "--sweep-ce", "1,10"], capsys)
    assert "give one or the other" in error_of(["--sweep-ce", "1,10", "--ce-weight", "3"], capsys)


def test_cnn_reference_lines_are_labelled_by_recipe(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"args": {"weight_decay": 0.0, "schedule": "constant", "lr": 1e-3,
                                         "augment": False}, "final": {"test_acc": 0.9}}))
    args = joint.parse_args(["--sweep-ce", "1", "--cnn-metrics", str(path)])
    assert joint.cnn_references(args) == {"CNN: Adam, constant lr 0.001, no augmentation": 0.9}
    path.write_text("{}")
    with pytest.raises(SystemExit, match="not a cnn.py metrics file"):
        joint.cnn_references(args)
    # another script's metrics (a final test_acc, but no CNN recipe in its args): one line too
    path.write_text(json.dumps({"args": {"lr": 1e-3}, "final": {"test_acc": 0.8}}))
    with pytest.raises(SystemExit, match="not a cnn.py metrics file"):
        joint.cnn_references(args)


def test_pretrain_reuses_vae_py_weights_and_freezes_the_encoder_then_load(synthetic_data, tmp_path, capsys):
    vae.main(quick_args(synthetic_data, tmp_path, "--arch", "conv"))
    [vae_weights] = tmp_path.glob("vae_conv*.pt")  # whatever vae.py names its quick run
    vae_state = common.load_checkpoint(vae_weights, "vae_conv")["models"]["model"]
    pretrain = quick_args(synthetic_data, tmp_path, "--mode", "pretrain", "--vae-weights", vae_weights)
    joint.main(pretrain)
    assert "pretrained VAE: " in capsys.readouterr().out
    names = joint.model_names(joint.parse_args(pretrain))
    runs = (names["frozen"], names["finetuned"])
    assert runs[0].startswith(f"joint_pretrain_frozen{QUICK}")  # plus the VAE file's stem, if not vae_conv
    frozen = common.load_checkpoint(tmp_path / f"{runs[0]}.pt", "joint_pretrain_frozen")
    tuned = common.load_checkpoint(tmp_path / f"{runs[1]}.pt", "joint_pretrain_finetuned")
    for key in ("encoder.0.weight", "to_mu.weight"):
        assert torch.equal(frozen["models"]["model"][f"vae.{key}"], vae_state[key])  # untouched
        assert not torch.equal(tuned["models"]["model"][f"vae.{key}"], vae_state[key])  # trained
    assert json.loads((tmp_path / f"{runs[0]}_metrics.json").read_text())["vae_weights"] == str(vae_weights)
    # --load takes the two classifiers' weights files, frozen then fine-tuned; no VAE is needed
    joint.main(quick_args(synthetic_data, tmp_path / "b", "--mode", "pretrain",
                          "--load", *(tmp_path / f"{run}.pt" for run in runs)))
    for run in runs:
        assert final(tmp_path / "b" / f"{run}_metrics.json") == final(tmp_path / f"{run}_metrics.json")


def test_pretrain_needs_vae_py_weights(synthetic_data, tmp_path, capsys):
    pretrain = [*quick_args(synthetic_data, tmp_path), "--mode", "pretrain"]
    message = error_of(pretrain, capsys)
    assert f"--vae-weights: no file at {tmp_path / 'vae_conv.pt'}" in message
    assert "run `python vae.py --arch conv" in message
    assert not list(tmp_path.glob("*.pt"))  # it never trains a VAE itself
    assert "--load takes 2 weights files here" in error_of([*pretrain, "--load", tmp_path / "a.pt"], capsys)


def test_resume_is_strict_in_both_modes(synthetic_data, tmp_path, capsys):
    message = error_of([*quick_args(synthetic_data, tmp_path), "--resume"], capsys)
    assert "--resume: no checkpoint at" in message and f"joint{QUICK}.ckpt" in message
    common.save_checkpoint(tmp_path / "vae_conv.pt", "vae_conv",
                           models={"model": vae.ConvVAE().state_dict()}, epoch=1, history=[], seconds=0.0)
    message = error_of([*quick_args(synthetic_data, tmp_path), "--mode", "pretrain", "--resume"], capsys)
    assert "--resume: no checkpoint at" in message and f"joint_pretrain_frozen{QUICK}.ckpt" in message


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(synthetic_data, tmp_path, monkeypatch):
    joint.main(quick_args(synthetic_data, tmp_path / "whole", "--epochs", "3", "--eval-every", "2"))
    kill_at_call(monkeypatch, joint, "evaluate", 3)  # in epoch 2: epoch 1 evaluated train and test
    with pytest.raises(KeyboardInterrupt):
        joint.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "3", "--eval-every", "2"))
    monkeypatch.undo()
    joint.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "3", "--eval-every", "2", "--resume"))
    whole, split = (json.loads((tmp_path / d / "joint_e3_limit128_eval2_metrics.json").read_text())
                    for d in ("whole", "split"))
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(split["history"]) == strip(whole["history"]) and split["final"] == whole["final"]


def test_comparison_reads_the_cnn_metrics_or_says_they_are_missing(synthetic_data, tmp_path, capsys):
    joint.main(quick_args(synthetic_data, tmp_path))
    assert "cnn_metrics.json not found" in capsys.readouterr().out
    common.write_json(tmp_path / "cnn_metrics.json", {"final": {"test_acc": 0.5}})
    args = joint.parse_args(quick_args(synthetic_data, tmp_path))  # the same knobs: the same runs
    joint.compare(args)
    table = json.loads((tmp_path / f"joint_comparison{QUICK}.json").read_text())
    assert table["CNN (cnn.py)"] == 0.5 and "joint" in table
    (tmp_path / "cnn_metrics.json").write_text("{not json")  # damaged: left out, and said so
    joint.compare(args)
    assert "cnn_metrics.json is not a metrics file" in capsys.readouterr().out
    assert "CNN (cnn.py)" not in json.loads((tmp_path / f"joint_comparison{QUICK}.json").read_text())


@pytest.mark.parametrize("flags, phrase", [
    (["--ce-weight", "-1"], "argument --ce-weight: must be >= 0, got -1"),
    (["--mode", "both"], "argument --mode: invalid choice"),
])
def test_bad_flags_are_refused(flags, phrase, tmp_path):
    assert_one_line_error(run_script("joint.py", "--out-dir", tmp_path, *flags), phrase)


def test_foreign_weights_are_refused(synthetic_data, tmp_path):
    cnn_weights = tmp_path / "cnn.pt"
    common.save_checkpoint(cnn_weights, "cnn", models={})
    result = run_script("joint.py", *quick_args(synthetic_data, tmp_path / "o"), "--load", cnn_weights)
    assert_one_line_error(result, "holds 'cnn' weights, expected 'joint'")
    result = run_script("joint.py", *quick_args(synthetic_data, tmp_path / "o"), "--mode", "pretrain",
                        "--vae-weights", cnn_weights)
    assert_one_line_error(result, "holds 'cnn' weights, expected 'vae_conv'")


# --- the training step against a hand-written step on its objective ------------------------------
SHUFFLE_SEED = 5  # its randperm(4) is not the identity, so a target taken in the wrong order fails
KNOBS = ["--ce-weight", "7", "--recon-weight", "0.4", "--kl-weight", "0.3", "--latent-dim", "4"]


def joint_objective_by_hand(model, x, y, args, generator):
    """The module's objective, ce_weight·CE(head(μ), y) + recon_weight·recon + kl_weight·KL per
    example averaged over the batch, written again from the networks' raw outputs: CE from
    log_softmax, BCE from F.logsigmoid, the KL from torch.distributions. Random numbers in the
    order the step draws them: the batch order (randperm), then ε of the batch's shape."""
    order = torch.randperm(len(x), generator=generator)
    x, y = x[order], y[order]  # the one batch, in the step's order
    h = model.vae.encoder(x)
    mu, sigma = model.vae.to_mu(h), torch.exp(0.5 * model.vae.to_logvar(h))
    logits = model.vae.decoder(mu + sigma * torch.randn(mu.shape, generator=generator))
    if args.recon == "bce":
        recon = -(x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum((1, 2, 3))
    else:
        recon = ((torch.sigmoid(logits) - x) ** 2).sum((1, 2, 3))
    kl = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(1)
    ce = -F.log_softmax(model.head(mu), dim=1).gather(1, y[:, None]).squeeze(1)
    return (args.ce_weight * ce + args.recon_weight * recon + args.kl_weight * kl).mean()


def cross_entropy_by_hand(model, x, y):
    """-(1/B) Σ log softmax(head(μ(x)))[y], the pretrained classifier's objective."""
    logits = model.head(model.vae.to_mu(model.vae.encoder(x)))
    return -F.log_softmax(logits, dim=1).gather(1, y[:, None]).mean()


def gradients_by_hand(loss, model):
    """{name: ∂loss/∂parameter}, zero for a parameter the loss does not reach."""
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g
            for (name, p), g in zip(model.named_parameters(), grads)}


@pytest.mark.parametrize("recon", ["bce", "mse"])
def test_joint_step_descends_the_documented_objective(recon):
    """One step of train_epoch with joint_terms (what fit's loop runs in joint mode) on 4 images,
    at CE weight 7, reconstruction weight 0.4, KL weight 0.3, gives every parameter (decoder and
    head included) the gradient of the docstring's combined objective computed by hand; an SGD
    of learning rate 0 keeps the weights and leaves the step's gradients in .grad."""
    torch.manual_seed(0)
    args = joint.parse_args([*KNOBS, "--recon", recon, "--batch-size", "4"])
    model, x, y = joint.JointVAE(args.latent_dim), torch.rand(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    expected = gradients_by_hand(joint_objective_by_hand(
        model, x, y, args, torch.Generator().manual_seed(SHUFFLE_SEED)), model)
    joint.train_epoch(model, joint.joint_terms, torch.optim.SGD(model.parameters(), lr=0.0), x, y,
                      args, "epoch 1", torch.Generator().manual_seed(SHUFFLE_SEED))
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6), name


def test_classifier_step_descends_the_cross_entropy_of_the_mean():
    """One step of train_epoch with classifier_terms gives the gradient of CE(head(μ), y) alone,
    whatever the joint weights say (here 7, 0.4, 0.3): the decoder and log-variance get none.
    The batch is shuffled, so labels taken in another order than their images fail."""
    torch.manual_seed(0)
    args = joint.parse_args(["--mode", "pretrain", *KNOBS, "--batch-size", "4"])
    model, x, y = joint.JointVAE(args.latent_dim), torch.rand(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    assert not torch.equal(torch.randperm(4, generator=torch.Generator().manual_seed(SHUFFLE_SEED)),
                           torch.arange(4))
    expected = gradients_by_hand(cross_entropy_by_hand(model, x, y), model)
    joint.train_epoch(model, joint.classifier_terms, torch.optim.SGD(model.parameters(), lr=0.0),
                      x, y, args, "epoch 1", torch.Generator().manual_seed(SHUFFLE_SEED))
    for name, p in model.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        assert torch.allclose(grad, expected[name], rtol=1e-4, atol=1e-6), name


def without_figures(monkeypatch):
    """Figures are not what these tests check and cost most of a tiny run's time: each is closed
    unwritten."""
    monkeypatch.setattr(common, "save_figure", lambda fig, path: plt.close(fig))


class OptimizerBuilt(Exception):
    """Raised by the spy on torch.optim.Adam: the optimizer is what the test wanted, not the run."""


def test_joint_fit_builds_plain_adam_over_every_parameter_at_the_set_lr(tmp_path, monkeypatch):
    """--mode joint trains every parameter of the JointVAE (of --latent-dim 4) with Adam at --lr
    (here 0.0123), default betas, no weight decay. The spy's lr defaults to Adam's own default, so a call that
    leaves out --lr records 0.001."""
    calls, models, real_joint_vae = [], [], joint.JointVAE

    def recorder(params, lr=1e-3, **settings):
        calls.append((list(params), lr, settings))
        raise OptimizerBuilt

    def recorded_model(*args, **kwargs):
        models.append(real_joint_vae(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(torch.optim, "Adam", recorder)
    monkeypatch.setattr(joint, "JointVAE", recorded_model)
    args = joint.parse_args(["--out-dir", str(tmp_path), "--lr", "0.0123", "--latent-dim", "4"])
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    with pytest.raises(OptimizerBuilt):
        joint.run_joint(args, ((x, y), (x, y)), torch.Generator())
    [(params, lr, settings)], [model] = calls, models
    assert [id(p) for p in params] == [id(p) for p in model.parameters()]
    assert lr == 0.0123 and settings == {}
    assert model.head.in_features == model.vae.to_mu.out_features == 4  # --latent-dim reaches it


def test_pretrain_moves_only_what_each_variant_trains(tmp_path, monkeypatch):
    """--mode pretrain, one epoch of one batch of 4 at --lr 0.05, through run_pretrain and fit:
    each classifier ends exactly one Adam step (torch's Adam at the set lr, on the gradient of
    the cross-entropy written by hand) from where it started, over the parameters its docstring
    trains: the softmax layer alone when frozen (the encoder stays bit for bit), the encoder,
    μ-layer and softmax layer when fine-tuned. The decoder and log-variance layer never move."""
    torch.manual_seed(0)
    common.save_checkpoint(tmp_path / "vae_conv.pt", "vae_conv", models={"model": joint.ConvVAE(4).state_dict()},
                           epoch=1, history=[], seconds=0.0)
    args = joint.parse_args(["--mode", "pretrain", "--out-dir", str(tmp_path), "--latent-dim", "4",
                             "--epochs", "1", "--batch-size", "4", "--lr", "0.05"])
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    started, trained, real_fit = {}, {}, joint.fit

    def recording_fit(model, loss_terms, data, args, stem, kind, generator, trainable):
        started[kind], trained[kind] = copy.deepcopy(model), model
        return real_fit(model, loss_terms, data, args, stem, kind, generator, trainable)

    monkeypatch.setattr(joint, "fit", recording_fit)
    without_figures(monkeypatch)
    joint.run_pretrain(args, ((x, y), (x, y)))
    vae_state = common.load_checkpoint(tmp_path / "vae_conv.pt", "vae_conv")["models"]["model"]
    trained_by_docstring = {"frozen": ("head.",), "finetuned": ("vae.encoder.", "vae.to_mu.", "head.")}
    for variant, prefixes in trained_by_docstring.items():
        name = f"joint_pretrain_{variant}"
        reference = started[name]  # becomes the expected model after one hand-made Adam step
        assert all(torch.equal(reference.vae.state_dict()[k], v) for k, v in vae_state.items())
        params = [p for n, p in reference.named_parameters() if n.startswith(prefixes)]
        order = torch.randperm(4, generator=torch.Generator().manual_seed(args.seed))
        grads = torch.autograd.grad(cross_entropy_by_hand(reference, x[order], y[order]), params)
        for p, g in zip(params, grads):
            p.grad = g
        torch.optim.Adam(params, lr=0.05).step()
        for (n, after), expected in zip(trained[name].named_parameters(), reference.parameters()):
            if n.startswith(prefixes):
                assert torch.allclose(after, expected, rtol=0, atol=1e-6), (variant, n)
            else:
                assert torch.equal(after, expected), (variant, n)  # not moved at all


def test_each_ce_sweep_member_trains_with_its_own_weight(synthetic_data, tmp_path, monkeypatch):
    """Each --sweep-ce member's training step sees that member's CE weight (not the default
    --ce-weight 1) and the base reconstruction weight, KL weight and --recon."""
    seen, real_train_epoch = [], joint.train_epoch

    def recording(model, loss_terms, optimizer, x, y, args, *rest):
        seen.append((loss_terms, args.ce_weight, args.recon_weight, args.kl_weight, args.recon))
        return real_train_epoch(model, loss_terms, optimizer, x, y, args, *rest)

    monkeypatch.setattr(joint, "train_epoch", recording)
    without_figures(monkeypatch)
    joint.main(["--data-dir", str(synthetic_data), "--out-dir", str(tmp_path), *DEVICE_FLAGS,
                "--epochs", "1", "--limit", "16", "--sweep-ce", "0.5,7",
                "--recon-weight", "0.4", "--kl-weight", "0.3", "--recon", "mse", "--latent-dim", "4"])
    assert seen == [(joint.joint_terms, 0.5, 0.4, 0.3, "mse"), (joint.joint_terms, 7.0, 0.4, 0.3, "mse")]


@pytest.mark.parametrize("mode", ["joint", "pretrain"])
def test_images_reach_the_encoder_in_0_1_and_are_their_own_target(mode, synthetic_data, tmp_path, monkeypatch):
    """At the encoder's input, in training and in evaluation, the images are in [0, 1] (the range
    vae.py's encoder was trained on and the Bernoulli decoder's targets must have), not rescaled
    to [-1, 1] nor divided by 255 twice (the synthetic squares are brighter than 0.5); every
    reconstruction loss compares the decoded image with the very batch the encoder has just seen."""
    encoder_inputs, pairs = [], []
    real_joint_vae, real_reconstruction_loss = joint.JointVAE, joint.reconstruction_loss

    def hooked_model(*args, **kwargs):
        model = real_joint_vae(*args, **kwargs)
        model.vae.encoder.register_forward_pre_hook(
            lambda module, inputs: encoder_inputs.append(inputs[0].detach().clone()))
        return model

    def reconstruction_loss(logits, x, kind):
        pairs.append((encoder_inputs[-1], x.detach().clone()))
        return real_reconstruction_loss(logits, x, kind)

    monkeypatch.setattr(joint, "JointVAE", hooked_model)
    monkeypatch.setattr(joint, "reconstruction_loss", reconstruction_loss)
    without_figures(monkeypatch)
    common.save_checkpoint(tmp_path / "vae_conv.pt", "vae_conv", models={"model": joint.ConvVAE(4).state_dict()},
                           epoch=1, history=[], seconds=0.0)
    joint.main(["--data-dir", str(synthetic_data), "--out-dir", str(tmp_path), *DEVICE_FLAGS, "--mode", mode,
                "--epochs", "1", "--limit", "16", "--batch-size", "8", "--latent-dim", "4"])
    assert len(encoder_inputs) >= 3  # two training batches and the evaluations
    for images in encoder_inputs:
        assert images.min() >= 0 and 0.5 < images.max() <= 1
    if mode == "joint":
        assert len(pairs) >= 3 and all(torch.equal(seen, target) for seen, target in pairs)
