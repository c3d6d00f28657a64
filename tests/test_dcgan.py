"""dcgan.py: the report's architecture exactly, the losses' directions, smoke with --load,
--resume, --amp, bad input."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

import common
import dcgan
from conftest import (DEVICE_FLAGS, assert_one_line_error, guard_host_copies, kill_at_call,
                      needs_bf16, record_gradients, run_script)


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "128", *map(str, extra)]


def layer_outputs(net, x, kinds):
    shapes = []
    for layer in net:
        x = layer(x)
        if isinstance(layer, kinds):
            shapes.append((tuple(x.shape[1:]), sum(p.numel() for p in layer.parameters())))
    return shapes


def test_generator_matches_the_report():
    G = dcgan.Generator()
    assert sum(p.numel() for p in G.parameters()) == 791_776
    convs = layer_outputs(G.net, torch.randn(2, 100, 1, 1), (torch.nn.ConvTranspose2d, torch.nn.Conv2d))
    assert convs == [((128, 7, 7), 627_200), ((64, 14, 14), 131_072), ((32, 28, 28), 32_768), ((1, 28, 28), 288)]
    out = G(torch.randn(3, 100))
    assert out.shape == (3, 1, 28, 28) and out.abs().max() <= 1  # Tanh


def test_discriminator_matches_the_report():
    D = dcgan.Discriminator()
    assert sum(p.numel() for p in D.parameters()) == 691_680
    convs = layer_outputs(D.net, torch.randn(2, 1, 28, 28), torch.nn.Conv2d)
    assert convs == [((32, 28, 28), 288), ((64, 14, 14), 32_768), ((128, 7, 7), 131_072),
                     ((256, 3, 3), 524_288), ((1, 1, 1), 2_304)]
    assert D(torch.randn(5, 1, 28, 28)).shape == (5,)


def test_losses_point_the_right_way():
    confident, unsure = torch.full((8,), 6.0), torch.zeros(8)
    # D's loss falls when it separates real (high logits) from fake (low logits)
    assert dcgan.discriminator_loss(confident, -confident) < dcgan.discriminator_loss(unsure, unsure)
    assert dcgan.discriminator_loss(unsure, unsure).item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    # G's loss falls when D calls its fakes real
    assert dcgan.generator_loss(confident) < dcgan.generator_loss(unsure) < dcgan.generator_loss(-confident)
    # one-sided smoothing: D's best logit on real images is no longer +inf
    assert dcgan.discriminator_loss(confident, -confident, 0.9) > dcgan.discriminator_loss(unsure + 2.2, -confident, 0.9)


def test_training_step_runs_on_the_device_alone(monkeypatch):
    """An epoch of both update steps with G, D and the data on PyTorch's meta device (shapes
    without values): a CPU tensor left in the step fails (meta and CPU tensors do not mix), so
    does an .item() (a meta tensor has no value to read). The CPU-drawn order and noise reach the
    device through common.to_device (pinned and non-blocking on CUDA), not through a .to() that
    makes the host wait."""
    meta = torch.device("meta")
    G, D = dcgan.Generator().to(meta), dcgan.Discriminator().to(meta)
    G.apply(dcgan.init_weights)
    D.apply(dcgan.init_weights)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    args = dcgan.parse_args(["--batch-size", "4"])
    copies = guard_host_copies(monkeypatch)
    terms = dcgan.train_epoch(G, D, opt_g, opt_d, torch.rand(8, 1, 28, 28, device=meta), args, 1,
                              torch.Generator().manual_seed(0))
    assert all(v.device == meta and v.shape == (2,) for v in terms.values())
    assert all(p.grad.device == meta for p in [*G.parameters(), *D.parameters()])
    assert copies == [(8,), (4, dcgan.NZ), (4, dcgan.NZ)]  # the order once, the noise every step


# --- the training step against a hand-written step on its objective -----------------------------


def initialised_nets():
    torch.manual_seed(0)
    G, D = dcgan.Generator(), dcgan.Discriminator()
    G.apply(dcgan.init_weights)
    D.apply(dcgan.init_weights)
    return G, D


def test_both_update_steps_descend_the_docstring_objectives(float64):
    """Two batches of 4 through train_epoch, with --real-label 0.9, --beta1 0.3 and --lr 1e-3 (all
    non-default), against a loop written from the docstrings with plain Adam(lr, (β1, 0.999)):
    the same minibatch order and noise (drawn as the script draws: the order, then each batch's
    z), real images scaled to [-1, 1];
      D step: -[0.9·log D(x) + 0.1·log(1 - D(x))] - log(1 - D(G(z))), the fakes detached;
      G step: the non-saturating -log D(G(z)) through the just-updated D, on the same fakes.
    The gradient each optimizer sees at each step is compared (Adam's first step keeps only the
    sign of g, so a loss of the wrong form could otherwise pass), then both nets' parameters after
    the two steps (which need lr and β1)."""
    args = dcgan.parse_args(["--batch-size", "4", "--lr", "1e-3", "--beta1", "0.3", "--real-label", "0.9"])
    G, D = initialised_nets()
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    x = torch.rand(8, 1, 28, 28)
    opt_g, opt_d = dcgan.make_optimizers(G, D, args)
    seen_g = record_gradients(opt_g, list(G.parameters()))
    seen_d = record_gradients(opt_d, list(D.parameters()))
    dcgan.train_epoch(G, D, opt_g, opt_d, x, args, 1, torch.Generator().manual_seed(5))

    adam_g = torch.optim.Adam(G_ref.parameters(), lr=1e-3, betas=(0.3, 0.999))
    adam_d = torch.optim.Adam(D_ref.parameters(), lr=1e-3, betas=(0.3, 0.999))
    generator = torch.Generator().manual_seed(5)
    order = torch.randperm(8, generator=generator)
    for step, idx in enumerate(order.split(4)):
        real = 2 * x[idx] - 1
        z = torch.randn(4, dcgan.NZ, generator=generator)
        fake = G_ref(z)
        real_logits, fake_logits = D_ref(real), D_ref(fake.detach())
        loss_d = (-(0.9 * F.logsigmoid(real_logits) + 0.1 * F.logsigmoid(-real_logits)).mean()
                  - F.logsigmoid(-fake_logits).mean())
        for net, loss, adam, seen in ((D_ref, loss_d, adam_d, seen_d), (G_ref, None, adam_g, seen_g)):
            if loss is None:  # the G step, after the D step: through the updated D
                loss = -F.logsigmoid(D_ref(fake)).mean()
            grads = torch.autograd.grad(loss, list(net.parameters()))
            for param, grad, grad_seen in zip(net.parameters(), grads, seen[step]):
                assert torch.allclose(grad_seen, grad, rtol=1e-7, atol=1e-10), (type(net).__name__, step)
                param.grad = grad
            adam.step()
    assert len(seen_d) == len(seen_g) == 2
    for net, reference in ((G, G_ref), (D, D_ref)):
        for param, expected in zip(net.parameters(), reference.parameters()):
            assert torch.allclose(param, expected, rtol=0, atol=1e-9), type(net).__name__


def test_both_optimizers_are_adam_at_the_configured_rate_and_beta1():
    """fit's optimizers: one Adam per net over exactly that net's parameters, at --lr, with
    betas (--beta1, 0.999)."""
    args = dcgan.parse_args(["--lr", "3e-4", "--beta1", "0.2"])
    G, D = dcgan.Generator(), dcgan.Discriminator()
    for optimizer, net in zip(dcgan.make_optimizers(G, D, args), (G, D)):
        assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
        group = optimizer.param_groups[0]
        assert group["lr"] == 3e-4 and group["betas"] == (0.2, 0.999) and group["weight_decay"] == 0
        assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters()]


def test_the_discriminator_sees_real_images_scaled_to_the_generators_range():
    """At D's input (a forward pre-hook) during train_epoch: first the batch's real images mapped
    from [0, 1] to [-1, 1] (the Tanh generator's range; pixels 0 and 1 reach -1 and 1), then the
    fakes detached for the D step, then the same fakes still attached to G for the G step."""
    args = dcgan.parse_args(["--batch-size", "4"])
    G, D = initialised_nets()
    x = torch.rand(4, 1, 28, 28)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0
    seen = []
    D.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    dcgan.train_epoch(G, D, *dcgan.make_optimizers(G, D, args), x, args, 1, torch.Generator().manual_seed(5))
    order = torch.randperm(4, generator=torch.Generator().manual_seed(5))
    real, fake_for_d, fake_for_g = seen
    assert torch.equal(real, 2 * x[order] - 1) and real.min() == -1 and real.max() == 1
    assert not fake_for_d.requires_grad and fake_for_g.requires_grad
    assert torch.equal(fake_for_d, fake_for_g.detach()) and fake_for_g.abs().max() <= 1


QUICK = "dcgan_e2_limit128"  # the run quick_args trains: dcgan plus the two knobs it changes


def metrics(out_dir, name=QUICK):
    return json.loads((out_dir / f"{name}_metrics.json").read_text())


def test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults():
    name = lambda *flags: dcgan.run_name(dcgan.parse_args([str(f) for f in flags]))  # noqa: E731
    assert name() == "dcgan"  # the README's default command (100 epochs, the report's) rewrites dcgan.*
    assert name("--epochs", 25) == "dcgan_e25"  # the committed GPU run
    assert name("--epochs", 3, "--real-label", 0.9, "--beta1", 0.9) == "dcgan_e3_beta0.9_real0.9"
    # flags that do not change what is computed stay out; a loaded file keeps its own name
    assert name("--device", "cpu", "--out-dir", "x", "--data-dir", "y", "--cnn-weights", "c.pt") == "dcgan"
    assert name("--load", "figures/dcgan_e25.pt") == "dcgan_e25"


@pytest.mark.slow
def test_run_then_load_repeats_figures_and_numbers(synthetic_data, cnn_weights, tmp_path):
    dcgan.main(quick_args(synthetic_data, tmp_path / "a", "--cnn-weights", cnn_weights))
    for what in (".pt", ".ckpt", "_metrics.json", "_loss.png", "_samples.png", "_epoch1.png", "_epoch2.png"):
        assert (tmp_path / "a" / f"{QUICK}{what}").is_file(), what
    dcgan.main(quick_args(synthetic_data, tmp_path / "b", "--cnn-weights", cnn_weights,
                          "--load", tmp_path / "a" / f"{QUICK}.pt"))
    a, b = (metrics(tmp_path / d)["final"] for d in "ab")
    assert a == b and "frechet_distance" in a and a["epochs_trained"] == 2
    assert (tmp_path / "b" / f"{QUICK}_epoch1.png").is_file()  # the snapshots come back with the weights


@pytest.mark.slow
def test_each_epoch_scores_the_fixed_noise_and_leaves_training_alone(synthetic_data, cnn_weights, tmp_path,
                                                                     monkeypatch):
    """With cnn.py's weights every epoch records frechet_2000: the Fréchet distance between the CNN
    features of that epoch's generator on the fixed noise of seed --seed + 3 and those of every
    test image (recomputed here from the saved generator); the floor is as many training images'
    (the first of a permutation of seed --seed), in the .pt and in the metrics' final block. The
    losses equal those of a run without the judge: scoring draws nothing from training's random
    stream."""
    monkeypatch.setattr(dcgan, "FRECHET_SAMPLES", 64)
    dcgan.main(quick_args(synthetic_data, tmp_path / "judged", "--cnn-weights", cnn_weights, "--seed", 5))
    dcgan.main(quick_args(synthetic_data, tmp_path / "plain", "--seed", 5))  # no cnn.pt there: unscored
    run = "dcgan_e2_seed5_limit128"
    judged, plain = metrics(tmp_path / "judged", run), metrics(tmp_path / "plain", run)
    losses = lambda m: [{k: r[k] for k in ("loss_d", "loss_g", "d_x", "d_g_z")} for r in m["history"]]  # noqa: E731
    assert losses(judged) == losses(plain) and "frechet_2000" not in plain["history"][-1]
    assert (tmp_path / "judged" / f"{run}_frechet.png").is_file()

    import cnn
    G, judge = dcgan.Generator(), cnn.CNN()
    saved = common.load_weights(tmp_path / "judged" / f"{run}.pt", "dcgan", {"generator": G}, "--load")
    common.load_weights(cnn_weights, "cnn", {"model": judge}, "--cnn-weights")
    (train_x, _), (test_x, _) = common.load_mnist_like("fashion-mnist", synthetic_data, "cpu", 128)
    with torch.no_grad():
        G.eval(), judge.eval()
        noise = torch.randn(64, dcgan.NZ, generator=torch.Generator().manual_seed(5 + 3))
        samples = ((G(noise) + 1) / 2).clamp(0, 1)
        real = train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(5))[:64]]
        test_features = judge.features(test_x)
        expected = cnn.frechet_distance(judge.features(samples), test_features)
        floor = cnn.frechet_distance(judge.features(real), test_features)
    assert judged["history"][-1]["frechet_2000"] == pytest.approx(expected, rel=1e-5)
    assert saved["frechet_floor_2000"] == pytest.approx(floor, rel=1e-5)
    assert judged["final"]["frechet_floor_2000"] == pytest.approx(floor, rel=1e-5)  # the JSON says it too
    assert "frechet_floor_2000" not in plain["final"]


@pytest.mark.slow
def test_resume_after_a_kill_continues_the_same_run_with_its_snapshots(synthetic_data, tmp_path, monkeypatch):
    dcgan.main(quick_args(synthetic_data, tmp_path / "whole"))
    kill_at_call(monkeypatch, dcgan, "train_epoch", 2)
    with pytest.raises(KeyboardInterrupt):
        dcgan.main(quick_args(synthetic_data, tmp_path / "split"))
    monkeypatch.undo()
    dcgan.main(quick_args(synthetic_data, tmp_path / "split", "--resume"))
    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    without_times = [[{k: v for k, v in r.items() if k != "seconds"} for r in m["history"]]
                     for m in (whole, split)]
    assert without_times[0] == without_times[1] and split["final"] == whole["final"]
    snapshots = common.load_checkpoint(tmp_path / "split" / f"{QUICK}.pt", "dcgan")["snapshots"]
    assert sorted(snapshots) == [1]  # epoch 1's, written before the kill


@needs_bf16
def test_amp_trains_in_bfloat16_to_finite_losses(synthetic_data, tmp_path):
    dcgan.main(quick_args(synthetic_data, tmp_path, "--epochs", "1", "--amp"))
    record = metrics(tmp_path, "dcgan_e1_amp_limit128")["history"][0]
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss_d", "loss_g", "d_x", "d_g_z"))


def test_resume_without_a_checkpoint(synthetic_data, tmp_path):
    result = run_script("dcgan.py", *quick_args(synthetic_data, tmp_path), "--resume")
    assert_one_line_error(result, "--resume: no checkpoint at", f"{QUICK}.ckpt")


@pytest.mark.parametrize("flags,phrases", [
    (["--epochs", "0"], ["--epochs", "> 0"]),
    (["--patience", "3"], ["--patience"]),
    (["--real-label", "1.5"], ["--real-label"]),
])
def test_bad_flags(flags, phrases):
    assert_one_line_error(run_script("dcgan.py", *flags), *phrases)
