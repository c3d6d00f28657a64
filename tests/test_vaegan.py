"""vaegan.py: the losses on hand-made batches, all four VAE-GAN combinations and the VAE with
--load, --resume, --amp, bad input, and every model's training step on the meta device."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import common
import vaegan
from conftest import (DEVICE_FLAGS, ROOT, assert_one_line_error, guard_host_copies, kill_at_call,
                      needs_bf16, record_gradients, run_script)


QUICK = "_e2_limit128"  # what quick_args adds to a variant's name: the knobs that differ


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "128", *map(str, extra)]


def test_prior_term_is_the_closed_form_kl():
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0, 1)).sum(1).mean()
    assert vaegan.kl_divergence(mu, logvar).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gan_terms_point_the_right_way():
    sure, unsure = torch.full((8,), 6.0), torch.zeros(8)
    separated = vaegan.discriminator_loss(sure, -sure, -sure)     # real high, both fakes low
    confused = vaegan.discriminator_loss(unsure, unsure, unsure)
    assert separated < confused
    assert confused.item() == pytest.approx(3 * torch.log(torch.tensor(2.0)).item())
    # the encoder/decoder side falls as Dis calls reconstructions and prior samples real
    assert vaegan.fooling_loss(sure, sure) < vaegan.fooling_loss(unsure, unsure) < vaegan.fooling_loss(-sure, -sure)


def test_pixel_bce_from_logits_is_the_bernoulli_log_likelihood():
    torch.manual_seed(0)
    logits, x = 3 * torch.randn(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    by_probability = F.binary_cross_entropy(torch.sigmoid(logits.double()), x.double(), reduction="sum") / 4
    assert vaegan.pixel_bce(logits, x).item() == pytest.approx(by_probability.item(), rel=1e-6)
    # where the sigmoid saturates in float32 the logits form stays exact: σ(40) rounds to 1, so
    # the probability form could only give its clamp of 100 nats for a black pixel
    saturated = torch.full((1, 1, 28, 28), 40.0)
    assert vaegan.pixel_bce(saturated, torch.zeros_like(saturated)).item() == pytest.approx(784 * 40.0)


def test_pixel_bce_returns_nan_for_the_finite_check_instead_of_raising():
    logits = torch.zeros(2, 1, 28, 28)
    logits[1, 0, 3, 3] = float("nan")
    assert torch.isnan(vaegan.pixel_bce(logits, torch.rand(2, 1, 28, 28)))


def test_dis_l_term_is_half_the_squared_feature_error():
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    assert vaegan.dis_l_loss(a, a).item() == 0
    expected = sum(0.5 * ((a[i] - b[i]) ** 2).sum().item() for i in range(5)) / 5
    assert vaegan.dis_l_loss(a, b).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_shapes(arch):
    encoder, decoder, discriminator = vaegan.Encoder(8, arch), vaegan.Decoder(8, arch), vaegan.Discriminator(arch)
    mu, logvar = encoder(torch.rand(4, 1, 28, 28))
    assert mu.shape == logvar.shape == (4, 8)
    assert decoder(mu).shape == (4, 1, 28, 28)  # logits
    image = decoder.image(mu)
    assert torch.equal(image, torch.sigmoid(decoder(mu))) and 0 <= image.min() and image.max() <= 1
    logits, features = discriminator(image)
    assert logits.shape == (4,) and features.shape == ((4, 128) if arch == "fc" else (4, 128 * 7 * 7))


def objectives_by_hand(nets, x, args, generator, noise_std=0.0):
    """The table of vaegan's docstring, written out again from the networks' raw outputs, with
    the KL from torch.distributions and the logs from F.logsigmoid; ε and z_p, then the instance
    noise on x, x̃ and x_p (std noise_std) are drawn from `generator` in the order the script
    draws them. Dis's target on real images is args.real_label r: its real-image term is the
    cross-entropy -[r log Dis(x) + (1 - r) log(1 - Dis(x))]."""
    encoder, decoder, discriminator = nets["encoder"], nets["decoder"], nets["discriminator"]
    mu, logvar = encoder(x)
    sigma = torch.exp(0.5 * logvar)
    reconstruction = torch.sigmoid(decoder(mu + sigma * torch.randn(mu.shape, generator=generator)))
    prior_images = torch.sigmoid(decoder(torch.randn(len(x), mu.shape[1], generator=generator)))
    seen = [images + noise_std * torch.randn(images.shape, generator=generator) if noise_std else images
            for images in (x, reconstruction, prior_images)]
    (real, real_features), (fake, fake_features), (prior, _) = map(discriminator, seen)
    l_prior = kl_divergence(Normal(mu, sigma), Normal(0, 1)).sum(1).mean()
    r = args.real_label
    l_gan = (r * F.logsigmoid(real).mean() + (1 - r) * F.logsigmoid(-real).mean()
             + F.logsigmoid(-fake).mean() + F.logsigmoid(-prior).mean())
    fooling = -F.logsigmoid(fake).mean() - F.logsigmoid(prior).mean()
    l_llike = 0.5 * (fake_features - real_features).pow(2).sum(1).mean()
    if args.dis_l:
        return {"encoder": l_prior + l_llike, "decoder": args.gamma * l_llike + fooling,
                "discriminator": -l_gan}
    return {"encoder": l_prior + fooling, "decoder": fooling, "discriminator": -l_gan}


@pytest.mark.parametrize("flags, noise_std", [([], 0.0), (["--dis-l", "--gamma", "0.7"], 0.0),
                                              (["--real-label", "0.8"], 0.25),
                                              (["--dis-l", "--real-label", "0.9"], 0.1)],
                         ids=["basic", "dis-l", "basic smoothed noisy", "dis-l smoothed noisy"])
def test_each_network_descends_what_the_docstring_states(flags, noise_std):
    """The gradient each network receives from vaegan.step equals the gradient of its row of the
    docstring's table, computed independently (objectives_by_hand), also with one-sided label
    smoothing and instance noise."""
    torch.manual_seed(0)
    args = vaegan.parse_args(flags)
    nets = vaegan.networks(args)
    x = torch.rand(16, 1, 28, 28)
    expected = objectives_by_hand(nets, x, args, torch.Generator().manual_seed(3), noise_std)
    by_hand = {name: torch.autograd.grad(expected[name], list(net.parameters()), retain_graph=True)
               for name, net in nets.items()}
    frozen = {name: torch.optim.SGD(net.parameters(), lr=0.0) for name, net in nets.items()}
    vaegan.step(nets, frozen, vaegan.vaegan_losses(nets, x, args, torch.Generator().manual_seed(3), noise_std))
    for name, net in nets.items():
        for param, grad in zip(net.parameters(), by_hand[name]):
            assert torch.allclose(param.grad, grad, rtol=1e-4, atol=1e-6), name


# --- the training step against a hand-written step on its objective -----------------------------


def vae_objective_by_hand(nets, x, generator):
    """--model vae's loss, reconstruction + prior, from the raw outputs: the Bernoulli
    -Σ_p [x log σ(l) + (1 - x) log σ(-l)] summed over pixels (F.logsigmoid) plus the KL to N(0, I)
    (torch.distributions), each averaged over the batch; ε drawn as the script draws it."""
    mu, logvar = nets["encoder"](x)
    sigma = torch.exp(0.5 * logvar)
    logits = nets["decoder"](mu + sigma * torch.randn(mu.shape, generator=generator))
    reconstruction = -(x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).flatten(1).sum(1).mean()
    prior = kl_divergence(Normal(mu, sigma), Normal(0, 1)).sum(1).mean()
    return reconstruction + prior



def train_one_epoch(args, n_images, epoch):
    """vaegan.train_epoch over n_images random images from seed-0 networks, with fit's
    optimizers, ε, z_p and the batch order from a generator seeded 3. Returns the networks
    before and after, the images, and the gradients each optimizer stepped with."""
    torch.manual_seed(0)
    nets = vaegan.networks(args)
    before = copy.deepcopy(nets)
    x = torch.rand(n_images, 1, 28, 28)
    optimizers = vaegan.make_optimizers(nets, args)
    seen = {name: record_gradients(optimizers[name], list(nets[name].parameters())) for name in nets}
    vaegan.train_epoch(nets, optimizers, x, args, epoch, torch.Generator().manual_seed(3))
    return before, nets, x, seen


@pytest.mark.parametrize("flags", [["--model", "vae"], [], ["--dis-l", "--gamma", "0.7"],
                                   ["--arch", "conv", "--dis-l", "--gamma", "0.01"]],
                         ids=["vae", "vaegan basic", "vaegan dis-l", "vaegan conv dis-l"])
def test_a_training_epoch_descends_each_networks_objective(flags, float64):
    """One batch of 4 through train_epoch, the loop's own path (which loss --model picks, the
    --gamma it passes, the images as stored in [0, 1]), with fit's optimizers at a non-default
    --lr: the gradient each network's optimizer sees equals the gradient of that network's
    objective written by hand (the VAE: reconstruction + prior for encoder and decoder alike; the
    VAE-GAN: its row of the docstring's table, objectives_by_hand), on the batch in the order and
    with the noise the script draws (the order, then ε, then z_p); and each parameter moved by
    Adam's first step at that rate, -lr·g/(|g| + ε)."""
    args = vaegan.parse_args([*flags, "--batch-size", "4", "--lr", "5e-4"])
    before, nets, x, seen = train_one_epoch(args, n_images=4, epoch=1)

    generator = torch.Generator().manual_seed(3)
    batch = x[torch.randperm(4, generator=generator)]
    for net in before.values():
        net.train()
    if args.model == "vae":
        objective = vae_objective_by_hand(before, batch, generator)
        expected = {"encoder": objective, "decoder": objective}
    else:
        expected = objectives_by_hand(before, batch, args, generator)
    assert set(seen) == set(expected) == set(nets)
    for name, net in before.items():
        grads = torch.autograd.grad(expected[name], list(net.parameters()), retain_graph=True)
        for grad_seen, grad, start, after in zip(seen[name][-1], grads, net.parameters(), nets[name].parameters()):
            # 1e-6 of the largest: pixel_bce is taken in float32 even here, on purpose (its docstring);
            # 1e-12 for a conv bias before BatchNorm, whose gradient is 0 up to rounding
            assert torch.allclose(grad_seen, grad, rtol=1e-6, atol=1e-6 * grad.abs().max() + 1e-12), name
            assert torch.allclose(after, start - 5e-4 * grad / (grad.abs() + 1e-8), rtol=0, atol=5e-7), name


def test_a_training_epoch_with_the_gan_knobs_descends_the_smoothed_noisy_objective(float64):
    """train_epoch at epoch 2 of 4 with --real-label 0.85 --instance-noise 0.3 --dis-every 2 on
    two batches: the first batch's gradients equal objectives_by_hand's with noise std
    0.3·(1 − 2/7) (batch 2 of the run's 8, counting from 0: linearly from 0.3 at the first to 0
    at the last); the discriminator steps on that batch only, the encoder and decoder on both."""
    args = vaegan.parse_args(["--batch-size", "4", "--epochs", "4", "--real-label", "0.85",
                              "--instance-noise", "0.3", "--dis-every", "2"])
    before, _, x, seen = train_one_epoch(args, n_images=8, epoch=2)
    assert {name: len(grads) for name, grads in seen.items()} == {"encoder": 2, "decoder": 2, "discriminator": 1}

    generator = torch.Generator().manual_seed(3)
    first_batch = x[torch.randperm(8, generator=generator)[:4]]
    for net in before.values():
        net.train()
    expected = objectives_by_hand(before, first_batch, args, generator, noise_std=0.3 * (1 - 2 / 7))
    for name, net in before.items():
        grads = torch.autograd.grad(expected[name], list(net.parameters()), retain_graph=True)
        for grad_seen, grad in zip(seen[name][0], grads):
            assert torch.allclose(grad_seen, grad, rtol=1e-6, atol=1e-6 * grad.abs().max() + 1e-12), name


@pytest.mark.parametrize("flags, lr, betas", [
    (["--model", "vae"], 1e-3, (0.9, 0.999)),
    ([], 2e-4, (0.5, 0.999)),
    (["--dis-l", "--lr", "7e-4"], 7e-4, (0.5, 0.999)),
], ids=["vae defaults", "vaegan defaults", "vaegan --lr"])
def test_each_network_gets_its_own_adam_with_the_models_settings(flags, lr, betas):
    """fit's optimizers: one Adam per network over exactly its parameters, at --lr (default 1e-3
    for the VAE, 2e-4 for the VAE-GAN) with β1 0.9 for the VAE and 0.5 for the VAE-GAN (as
    dcgan.py, Radford et al.)."""
    args = vaegan.parse_args(flags)
    nets = vaegan.networks(args)
    optimizers = vaegan.make_optimizers(nets, args)
    assert set(optimizers) == set(nets)
    for name, optimizer in optimizers.items():
        assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
        group = optimizer.param_groups[0]
        assert group["lr"] == lr and group["betas"] == betas and group["weight_decay"] == 0, name
        assert [id(p) for p in group["params"]] == [id(p) for p in nets[name].parameters()], name


@pytest.mark.parametrize("model", ["vae", "vaegan"])
def test_the_networks_see_images_in_zero_to_one(model):
    """At each network's input (forward pre-hooks) during train_epoch: the encoder gets the batch
    exactly as stored, in [0, 1] (the range the Bernoulli BCE and the sigmoid decoder are built
    for, no [-1, 1] rescaling as in dcgan.py); the discriminator gets that batch, then the
    reconstructions and the prior samples as images in [0, 1] (sigmoid of the decoder's logits);
    evaluate's encoder gets the test images as stored too, in eval mode."""
    args = vaegan.parse_args(["--model", model, "--batch-size", "4"])
    torch.manual_seed(0)
    nets = vaegan.networks(args)
    x = torch.rand(4, 1, 28, 28)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0
    seen = {name: [] for name in nets}
    for name, net in nets.items():
        net.register_forward_pre_hook(
            lambda module, inputs, name=name: seen[name].append((module.training, inputs[0].detach())))
    vaegan.train_epoch(nets, vaegan.make_optimizers(nets, args), x, args, 1, torch.Generator().manual_seed(3))
    batch = x[torch.randperm(4, generator=torch.Generator().manual_seed(3))]
    (training, encoded), = seen["encoder"]
    assert training and torch.equal(encoded, batch)
    if model == "vaegan":
        real, reconstruction, prior = (images for _, images in seen["discriminator"])
        assert torch.equal(real, batch)
        assert 0 <= min(reconstruction.min(), prior.min()) and max(reconstruction.max(), prior.max()) <= 1
    seen["encoder"].clear()
    vaegan.evaluate(nets, x, args)
    (training, encoded), = seen["encoder"]
    assert not training and torch.equal(encoded, x)


def test_the_committed_vae_weights_load_into_the_logits_decoder():
    """The decoder lost its final Sigmoid (no parameters): figures/vaegan_vae_fc.pt, saved with
    it, still loads strictly."""
    nets = vaegan.networks(vaegan.parse_args(["--model", "vae"]))
    common.load_weights(ROOT / "figures" / "vaegan_vae_fc.pt", "vaegan_vae_fc", nets, flag="--load")


# --- device paths, without the hardware ----------------------------------------------------------
MODELS = [["--model", "vae"], ["--model", "vae", "--arch", "conv"],
          [], ["--dis-l"], ["--arch", "conv"], ["--arch", "conv", "--dis-l"]]


@pytest.mark.parametrize("flags", MODELS, ids=lambda flags: " ".join(flags) or "vaegan fc")
def test_a_training_epoch_runs_on_the_meta_device(flags, monkeypatch):
    """train_epoch, the script's own per-batch path, with networks, optimizers and data on
    PyTorch's meta device (shapes, no values): a tensor left on the CPU, an .item() (a wait for
    the device) or a plain CPU → device copy of the noise or the indices fails here."""
    args = vaegan.parse_args([*flags, "--batch-size", "4"])
    meta = torch.device("meta")
    with meta:
        nets = vaegan.networks(args)
        x = torch.empty(8, 1, 28, 28)
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=args.lr) for name, net in nets.items()}
    guard_host_copies(monkeypatch)
    logged = vaegan.train_epoch(nets, optimizers, x, args, 1, torch.Generator().manual_seed(0))
    expected = {"recon", "prior"} if args.model == "vae" else {
        "prior", "fool", "dis", "d_x", "d_recon", "d_prior", "encoder", "decoder",  # objectives too
        *(["llike"] if args.dis_l else [])}
    assert set(logged) == expected
    assert all(v.device == meta and v.shape == (2,) for v in logged.values())  # two batches of 4
    assert all(p.grad is not None and p.grad.device == meta
               for net in nets.values() for p in net.parameters())


VARIANTS = [(["--model", "vae"], "vaegan_vae_fc"),
            ([], "vaegan_fc"), (["--dis-l"], "vaegan_fc_disl"),
            (["--arch", "conv"], "vaegan_conv"), (["--arch", "conv", "--dis-l"], "vaegan_conv_disl")]


@pytest.mark.slow
@pytest.mark.parametrize("flags,run", VARIANTS)
def test_every_combination_runs_and_reloads(flags, run, synthetic_data, cnn_weights, tmp_path):
    extra = [*flags, "--cnn-weights", cnn_weights]
    vaegan.main(quick_args(synthetic_data, tmp_path / "a", *extra))
    run += QUICK
    for suffix in (".pt", ".ckpt", "_metrics.json", "_samples.png", "_reconstructions.png", "_loss.png"):
        assert (tmp_path / "a" / f"{run}{suffix}").is_file(), suffix
    vaegan.main(quick_args(synthetic_data, tmp_path / "b", *extra, "--load", tmp_path / "a" / f"{run}.pt"))
    assert not list((tmp_path / "b").glob("*.pt"))  # --load keeps the file's own name, writes no weights
    a, b = (json.loads((tmp_path / d / f"{run}_metrics.json").read_text())["final"] for d in "ab")
    assert a == b and "frechet_distance" in a


def metrics(out_dir):
    (path,) = out_dir.glob("vaegan_*_metrics.json")  # the one run in out_dir, whatever its knobs
    return json.loads(path.read_text())


def test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults():
    """The variant, then each knob that differs from that variant's defaults: the default
    commands keep the committed names, a changed knob writes beside them, flags that do not
    change the result stay out, --load keeps the loaded file's name."""
    name = lambda *flags: vaegan.run_name(vaegan.parse_args(list(flags)))
    assert name("--model", "vae", "--device", "cpu", "--out-dir", "x", "--data-dir", "y",
                "--cnn-weights", "z.pt") == "vaegan_vae_fc"
    assert name("--dis-l", "--epochs", "20") == "vaegan_fc_disl_e20"  # the committed runs' names
    assert name("--arch", "conv", "--epochs", "11") == "vaegan_conv_e11"
    assert name("--model", "vae", "--latent-dim", "8", "--lr", "1e-3") == "vaegan_vae_fc_z8"
    assert name("--arch", "conv", "--latent-dim", "32", "--gamma", "0.01") == "vaegan_conv_gamma0.01"
    assert name("--model", "vae", "--load", "runs/vaegan_vae_fc_e3.pt") == "vaegan_vae_fc_e3"
    assert (name("--epochs", "20", "--real-label", "0.9", "--instance-noise", "0.1", "--dis-every", "2")
            == "vaegan_fc_e20_real0.9_noise0.1_dis-every2")


@pytest.mark.parametrize("flags", [["--model", "vae"], ["--dis-l"]])
def test_resume_after_a_kill_matches_an_uninterrupted_run(flags, synthetic_data, tmp_path, monkeypatch):
    vaegan.main(quick_args(synthetic_data, tmp_path / "whole", *flags))
    kill_at_call(monkeypatch, vaegan, "evaluate", 2)
    with pytest.raises(KeyboardInterrupt):
        vaegan.main(quick_args(synthetic_data, tmp_path / "split", *flags))
    monkeypatch.undo()
    vaegan.main(quick_args(synthetic_data, tmp_path / "split", *flags, "--resume"))
    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    without_times = [[{k: v for k, v in r.items() if k != "seconds"} for r in m["history"]]
                     for m in (whole, split)]
    assert len(without_times[0]) == 2 and without_times[0] == without_times[1]
    assert split["final"] == whole["final"]


@needs_bf16
@pytest.mark.parametrize("flags", [["--model", "vae"], ["--dis-l"]])
def test_amp_trains_in_bfloat16_to_finite_losses(flags, synthetic_data, tmp_path):
    vaegan.main(quick_args(synthetic_data, tmp_path, *flags, "--epochs", "1", "--amp"))
    record = metrics(tmp_path)["history"][0]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in record.items() if k != "epoch")


def test_a_leaky_decoder_is_rebuilt_leaky_by_load(synthetic_data, tmp_path):
    """--leaky-decoder swaps the fc decoder's ReLUs for LeakyReLU(0.2), which hold no weights: a
    loaded file's decoder is rebuilt from the file's own args, so --load without the flag repeats
    the run's numbers (an ordinary decoder would load the same weights and decode differently)."""
    assert [type(m) for m in vaegan.Decoder(2, "fc", leaky=True).net[:4]] == [
        torch.nn.Linear, torch.nn.LeakyReLU, torch.nn.Linear, torch.nn.LeakyReLU]
    vaegan.main(quick_args(synthetic_data, tmp_path / "a", "--leaky-decoder", "--epochs", 1))
    run = "vaegan_fc_e1_limit128_leaky-decoder"
    vaegan.main(quick_args(synthetic_data, tmp_path / "b", "--load", tmp_path / "a" / f"{run}.pt"))
    a, b = (json.loads((tmp_path / d / f"{run}_metrics.json").read_text())["final"] for d in "ab")
    assert a == b


def test_resume_without_a_checkpoint(synthetic_data, tmp_path):
    result = run_script("vaegan.py", *quick_args(synthetic_data, tmp_path), "--resume")
    assert_one_line_error(result, "--resume: no checkpoint at", f"vaegan_fc{QUICK}.ckpt")


@pytest.mark.parametrize("flags,phrases", [
    (["--model", "gan"], ["invalid choice", "gan"]),
    (["--epochs", "0"], ["--epochs", "> 0"]),
    (["--model", "vae", "--dis-l"], ["--dis-l"]),
    (["--model", "vae", "--real-label", "0.9", "--dis-every", "2"], ["--real-label, --dis-every", "vaegan"]),
    (["--real-label", "1.1"], ["--real-label", "<= 1"]),
    (["--instance-noise", "-0.1"], ["--instance-noise"]),
    (["--dis-every", "0"], ["--dis-every"]),
    (["--arch", "conv", "--leaky-decoder"], ["--leaky-decoder", "fc"]),
])
def test_bad_flags(flags, phrases):
    assert_one_line_error(run_script("vaegan.py", *flags), *phrases)


def test_dcgan_weights_are_refused(synthetic_data, tmp_path):
    import dcgan
    dcgan.main(quick_args(synthetic_data, tmp_path, "--epochs", "1"))
    (weights,) = tmp_path.glob("dcgan*.pt")
    result = run_script("vaegan.py", *quick_args(synthetic_data, tmp_path, "--load", weights))
    assert_one_line_error(result, "'dcgan'", "expected 'vaegan_fc'")
