"""VAE and VAE-GAN on Fashion-MNIST: assignment B, part 3.
Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric" (arXiv:1512.09300;
equation numbers as there).

--model vae      autoencoder.py's fc design (copied so the file reads alone): 784-512-128 → μ, log σ²
                 of z → 128-512-784 pixel logits; loss BCE + KL.
--model vaegan   the same encoder and decoder with a discriminator, and the assignment's basic loss
                 L = L_prior + L_GAN (Eq. 5, the reconstructions added as in Algorithm 1).
--dis-l          bonus 1: + L_llike^{Dis_l} (Eq. 6-7), the squared error between the discriminator's
                 last hidden features of x and of x̃, for the paper's L (Eq. 8); γ weighs it.
--arch conv      bonus 2: the paper's Sec. 4.1 networks shrunk to 28x28.
--real-label, --instance-noise, --dis-every, --leaky-decoder
                 what helps fc GANs train (one-sided label smoothing, noise on what Dis sees,
                 fewer Dis steps, a leaky generator), for the basic loss whose Dis otherwise
                 wins (docs/vaegan.md's tries).

Each network descends its own objective (the table in vaegan_losses), as Algorithm 1 does. Two
departures, on purpose: the encoder and decoder descend the non-saturating "fooling" term in place
of -L_GAN (Goodfellow et al. 2014, Sec. 3); and without L_llike the encoder descends the
assignment's L = L_prior + fooling, since Algorithm 1's L_prior alone is minimised by ignoring x.
The decoders output pixel logits: the BCE is taken from them (pixel_bce), and sigmoid(logits) is
the image wherever one is drawn or judged.

Page: docs/vaegan.md (what it does, results, answers, every flag)
Run: python vaegan.py --model vaegan [--dis-l] [--arch conv] --data-dir ../shared/data
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import cnn
import common

N_SHOWN = 10


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=30, batch_size=128, lr=None)
    parser.add_argument("--model", choices=["vae", "vaegan"], default="vaegan",
                        help="a VAE alone, or the VAE-GAN")
    parser.add_argument("--arch", choices=["fc", "conv"], default="fc",
                        help="fc: autoencoder.py's fully connected design; conv: the paper's "
                             "Sec. 4.1 networks for 28x28")
    parser.add_argument("--latent-dim", type=common.positive_int,
                        help="length of z (default 2 for fc, as the autoencoder's bottleneck; "
                             "32 for conv)")
    parser.add_argument("--dis-l", action="store_true",
                        help="vaegan: add the learned similarity L_llike^{Dis_l} (bonus 1)")
    parser.add_argument("--gamma", type=common.nonnegative_float,
                        help="weight of L_llike^{Dis_l} against L_GAN in the decoder update (Eq. 9); "
                             "default 0.5 for fc, 0.002 for conv (see vaegan_losses)")
    parser.add_argument("--real-label", type=common.positive_float, default=1.0,
                        help="vaegan: Dis's target on real images; 0.9 = one-sided label smoothing "
                             "(Salimans et al. 2016, Sec. 3.4)")
    parser.add_argument("--instance-noise", type=common.nonnegative_float, default=0.0,
                        help="vaegan: std of Gaussian noise added to every image Dis sees in "
                             "training (x, x̃, x_p), falling linearly to 0 by the last batch "
                             "(Sønderby et al. 2017, Sec. 3.2); 0 = none")
    parser.add_argument("--dis-every", type=common.positive_int, default=1,
                        help="vaegan: Dis steps on every N-th batch only (1 Dis step per N "
                             "encoder/decoder steps); 1 = Algorithm 1")
    parser.add_argument("--leaky-decoder", action="store_true",
                        help="fc: LeakyReLU(0.2) in the decoder (the generator) in place of ReLU, "
                             "as GAN generators often have")
    cnn.add_sample_quality_args(parser)
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    if args.model == "vae" and args.dis_l:
        parser.error("--dis-l needs the discriminator of --model vaegan")
    gan_knobs = {"--real-label": args.real_label != 1, "--instance-noise": args.instance_noise > 0,
                 "--dis-every": args.dis_every != 1}
    if args.leaky_decoder and args.arch != "fc":
        parser.error("--leaky-decoder changes the fc decoder; the conv one has its own design")
    if args.model == "vae" and any(gan_knobs.values()):
        parser.error(f"{', '.join(k for k, on in gan_knobs.items() if on)}: only --model vaegan has a discriminator")
    if args.real_label > 1:
        parser.error("--real-label must be <= 1")
    if args.model == "vaegan" and args.patience:
        parser.error("--patience watches a test loss, and the VAE-GAN's objective has none")
    args.latent_dim = args.latent_dim or (2 if args.arch == "fc" else 32)
    args.lr = args.lr or (1e-3 if args.model == "vae" else 2e-4)
    if args.gamma is None:
        args.gamma = 0.5 if args.arch == "fc" else 2e-3
    return args


def variant(args):
    """The model's identity, e.g. vaegan_fc_disl: the checkpoint's kind, which --load checks."""
    if args.model == "vae":
        return f"vaegan_vae_{args.arch}"
    return f"vaegan_{args.arch}" + ("_disl" if args.dis_l else "")


def run_name(args):
    """What this run's files are called: with --load, the loaded file's own name; otherwise the
    variant plus every knob that differs from that variant's defaults (vaegan_fc_disl_e20,
    vaegan_vae_fc_z8, vaegan_conv_gamma0.01): a quick edit writes beside the committed run.
    --cnn-weights only picks the classifier that scores the samples, so it stays out."""
    if args.load:
        return Path(args.load).stem
    variant_flags = ["--model", args.model, "--arch", args.arch] + ["--dis-l"] * args.dis_l
    return common.run_name(variant(args), args, vars(parse_args(variant_flags)),
                           {"latent_dim": "z", "real_label": "real", "instance_noise": "noise"},
                           skip=("model", "arch", "dis_l", "cnn_weights"))


# ----------------------------------------------------------------------------------------------
# MODELS
# ----------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """x (B, 1, 28, 28) → μ, log σ² (B, z)."""

    def __init__(self, latent_dim, arch):
        super().__init__()
        if arch == "fc":  # autoencoder.py's encoder up to its bottleneck
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(),
                                      nn.Linear(512, 128), nn.ReLU())                        # (B, 128)
            width = 128
        else:  # the paper's 5x5 conv 64/128/256 with stride 2, then FC 2048, narrowed for 28x28
            self.body = nn.Sequential(
                nn.Conv2d(1, 32, 5, 2, 2), nn.BatchNorm2d(32), nn.ReLU(),                    # (B, 32, 14, 14)
                nn.Conv2d(32, 64, 5, 2, 2), nn.BatchNorm2d(64), nn.ReLU(),                   # (B, 64, 7, 7)
                nn.Conv2d(64, 128, 5, 2, 2), nn.BatchNorm2d(128), nn.ReLU(),                 # (B, 128, 4, 4)
                nn.Flatten(), nn.Linear(2048, 512), nn.BatchNorm1d(512), nn.ReLU())          # (B, 512)
            width = 512
        self.to_mu = nn.Linear(width, latent_dim)
        self.to_logvar = nn.Linear(width, latent_dim)

    def forward(self, x):
        h = self.body(x)
        return self.to_mu(h), self.to_logvar(h)


class Decoder(nn.Module):
    """z (B, z) → pixel logits (B, 1, 28, 28); the image is their sigmoid (`image`). The loss
    reads the logits (pixel_bce), so there is no final Sigmoid layer (it held no parameters:
    weights saved when it was there still load)."""

    def __init__(self, latent_dim, arch, leaky=False):
        super().__init__()
        if arch == "fc":  # autoencoder.py's decoder (leaky: LeakyReLU 0.2 in place of its ReLUs)
            act = (lambda: nn.LeakyReLU(0.2)) if leaky else nn.ReLU
            self.net = nn.Sequential(nn.Linear(latent_dim, 128), act(),
                                     nn.Linear(128, 512), act(),
                                     nn.Linear(512, 784),                                    # (B, 784) logits
                                     nn.Unflatten(1, (1, 28, 28)))
        else:  # the paper's FC 8x8x256 then 5x5 transposed convs, for a 7x7 start
            self.net = nn.Sequential(
                nn.Linear(latent_dim, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
                nn.Unflatten(1, (128, 7, 7)),                                                # (B, 128, 7, 7)
                nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1), nn.BatchNorm2d(64), nn.ReLU(),  # (B, 64, 14, 14)
                nn.ConvTranspose2d(64, 32, 5, 2, 2, output_padding=1), nn.BatchNorm2d(32), nn.ReLU(),   # (B, 32, 28, 28)
                nn.Conv2d(32, 1, 5, 1, 2))                                                   # (B, 1, 28, 28) logits

    def forward(self, z):
        return self.net(z)

    def image(self, z):
        """Dec(z) as pixels in [0, 1]: what figures show and the discriminator judges."""
        return torch.sigmoid(self(z))


class Discriminator(nn.Module):
    """x → (logit of "real" (B,), Dis_l features (B, F)); `hidden` ends at Dis_l."""

    def __init__(self, arch):
        super().__init__()
        if arch == "fc":
            self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.LeakyReLU(0.2),
                                        nn.Linear(512, 128), nn.LeakyReLU(0.2))              # (B, 128) = Dis_l
            self.head = nn.Linear(128, 1)
        else:
            self.hidden = nn.Sequential(
                nn.Conv2d(1, 32, 5, 1, 2), nn.ReLU(),                                        # (B, 32, 28, 28)
                nn.Conv2d(32, 64, 5, 2, 2), nn.BatchNorm2d(64), nn.ReLU(),                   # (B, 64, 14, 14)
                nn.Conv2d(64, 128, 5, 2, 2), nn.BatchNorm2d(128), nn.ReLU())                 # (B, 128, 7, 7) = Dis_l
            self.head = nn.Sequential(
                nn.Conv2d(128, 128, 5, 2, 2), nn.BatchNorm2d(128), nn.ReLU(),                # (B, 128, 4, 4)
                nn.Flatten(), nn.Linear(2048, 256), nn.BatchNorm1d(256), nn.ReLU(),
                nn.Linear(256, 1))

    def forward(self, x):
        features = self.hidden(x)
        return self.head(features).flatten(), features.flatten(1)


def networks(args):
    """The encoder and decoder, and with --model vaegan the discriminator, by name."""
    nets = {"encoder": Encoder(args.latent_dim, args.arch),
            "decoder": Decoder(args.latent_dim, args.arch, args.leaky_decoder)}
    if args.model == "vaegan":
        nets["discriminator"] = Discriminator(args.arch)
    return nets


def reparameterize(mu, logvar, generator):
    """z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2014, Sec. 2.4); ε from the CPU generator."""
    return mu + torch.exp(0.5 * logvar) * common.to_device(torch.randn(mu.shape, generator=generator),
                                                           mu.device)


# ----------------------------------------------------------------------------------------------
# LOSSES (each averaged over the batch)
# ----------------------------------------------------------------------------------------------
def kl_divergence(mu, logvar):
    """L_prior = KL(q(z|x) || N(0, I)) = -½ Σ_j (1 + log σ_j² - μ_j² - σ_j²) (Kingma & Welling
    2014, Appendix B; Larsen et al. Eq. 4). Summed over z."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def pixel_bce(logits, x):
    """The VAE's -log p(x|z) for a Bernoulli decoder with pixel probabilities sigmoid(logits):
    -Σ_p [x_p log σ(l_p) + (1 - x_p) log(1 - σ(l_p))], summed over the 784 pixels, averaged over
    the batch. Taken from the logits (binary_cross_entropy_with_logits, the log-sum-exp form):
    stable where the sigmoid saturates, and a NaN comes back as a NaN loss for the finite check
    to name its epoch and batch (the probability form raises on it: on CUDA an asynchronous
    device-side assert, reported at a later line). In float32 even under --amp (autocast also
    keeps this op in float32, on cpu and cuda)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none")
    return bce.flatten(1).sum(1).mean()


def dis_l_loss(features_reconstruction, features_real):
    """L_llike^{Dis_l} = -log N(Dis_l(x) | Dis_l(x̃), I) up to a constant = ½ Σ_f (Dis_l(x̃) -
    Dis_l(x))² (Larsen et al. Eq. 6-7), summed over the features."""
    return 0.5 * (features_reconstruction - features_real).pow(2).sum(1).mean()


def discriminator_loss(real_logits, reconstruction_logits, prior_logits, real_label=1.0):
    """-L_GAN = -[log Dis(x) + log(1 - Dis(x̃)) + log(1 - Dis(Dec(z_p)))] (Larsen et al. Eq. 5 with
    the reconstructions added, as in their Algorithm 1): Dis maximises L_GAN by minimising this
    cross-entropy (each term a batch mean). real_label < 1 (--real-label): the real images'
    target is that number instead of 1, one-sided label smoothing (Salimans et al. 2016)."""
    bce = F.binary_cross_entropy_with_logits
    return (bce(real_logits, torch.full_like(real_logits, real_label))
            + bce(reconstruction_logits, torch.zeros_like(reconstruction_logits))
            + bce(prior_logits, torch.zeros_like(prior_logits)))


def fooling_loss(reconstruction_logits, prior_logits):
    """The encoder's and decoder's side of L_GAN, non-saturating: -log Dis(x̃) - log Dis(x_p)
    (Goodfellow et al. 2014, Sec. 3: same fixed point as minimising log(1 - Dis), stronger gradients
    while Dis still wins)."""
    bce = F.binary_cross_entropy_with_logits
    return (bce(reconstruction_logits, torch.ones_like(reconstruction_logits))
            + bce(prior_logits, torch.ones_like(prior_logits)))


def vaegan_losses(nets, x, args, generator, noise_std=0.0):
    """One forward pass of Algorithm 1; returns each network's objective ("encoder", "decoder",
    and "dis" for the discriminator) and the terms that are logged. noise_std > 0 (--instance-noise):
    Dis sees x, x̃ and x_p each plus N(0, noise_std²) noise (drawn in that order after ε and z_p),
    in every term, L_llike's features too. x̃ = Dec(z), z ~ q(z|x);
    x_p = Dec(z_p), z_p ~ N(0, I); L_GAN = log Dis(x) + log(1 - Dis(x̃)) + log(1 - Dis(x_p));
    "fooling" = -log Dis(x̃) - log Dis(x_p) (its log Dis(x) term does not depend on Enc or Dec):

      network   --dis-l (Algorithm 1)                basic loss, L = L_prior + L_GAN
      Enc       L_prior + L_llike^{Dis_l}            L_prior + fooling
      Dec       γ·L_llike^{Dis_l} + fooling (Eq. 9)  fooling
      Dis       -L_GAN                               -L_GAN

    The basic model still collapses (docs/vaegan.md): nothing in its L compares x̃ with x, and a
    posterior equal to the prior satisfies both terms. Dis_l is the discriminator's last hidden
    layer (fc: 128 units; conv: the third convolution, as the paper's Sec. 4.1), deep enough to
    describe shape rather than pixels. L_llike sums over Dis_l's features (128 fc, 6,272 conv),
    so γ's default depends on the architecture (0.5 fc, 0.002 conv): it keeps γ·L_llike within a
    factor of about three of the fooling term at the start (first-epoch means of the committed
    runs: L_llike ≈ 27 fc, ≈ 575 conv; fooling ≈ 4.5 fc, ≈ 2.7 conv)."""
    encoder, decoder, discriminator = nets["encoder"], nets["decoder"], nets["discriminator"]
    mu, logvar = encoder(x)
    reconstruction = decoder.image(reparameterize(mu, logvar, generator))           # x̃
    z_prior = common.to_device(torch.randn(len(x), mu.shape[1], generator=generator), x.device)
    prior_images = decoder.image(z_prior)                                            # x_p

    def judge(images):  # Dis(images), through instance noise when there is any
        if noise_std:
            images = images + noise_std * common.to_device(torch.randn(images.shape, generator=generator), x.device)
        return discriminator(images)

    real_logits, real_features = judge(x)
    reconstruction_logits, reconstruction_features = judge(reconstruction)
    prior_logits, _ = judge(prior_images)
    terms = {"prior": kl_divergence(mu, logvar),
             "fool": fooling_loss(reconstruction_logits, prior_logits),
             "dis": discriminator_loss(real_logits, reconstruction_logits, prior_logits, args.real_label),
             "d_x": torch.sigmoid(real_logits).mean(),
             "d_recon": torch.sigmoid(reconstruction_logits).mean(),
             "d_prior": torch.sigmoid(prior_logits).mean()}
    if args.dis_l:
        terms["llike"] = dis_l_loss(reconstruction_features, real_features.detach())
        terms["encoder"] = terms["prior"] + terms["llike"]
        terms["decoder"] = args.gamma * terms["llike"] + terms["fool"]
    else:
        terms["encoder"] = terms["prior"] + terms["fool"]
        terms["decoder"] = terms["fool"]
    return terms


def vae_losses(nets, x, args, generator):
    """The VAE's negative ELBO, pixel BCE + KL, for both the encoder and the decoder."""
    mu, logvar = nets["encoder"](x)
    terms = {"recon": pixel_bce(nets["decoder"](reparameterize(mu, logvar, generator)), x),
             "prior": kl_divergence(mu, logvar)}
    terms["encoder"] = terms["decoder"] = terms["recon"] + terms["prior"]
    return terms


# ----------------------------------------------------------------------------------------------
# TRAINING
# ----------------------------------------------------------------------------------------------
def step(nets, optimizers, terms, skip=()):
    """Each network follows the gradient of its own loss only (Algorithm 1): gradients are taken
    per network with autograd.grad, then every optimizer steps, except those of the networks
    named in `skip` (--dis-every: the discriminator on the batches between its steps)."""
    stepping = [name for name in nets if name not in skip]
    for name in stepping:
        loss = terms[name if name != "discriminator" else "dis"]  # the discriminator's is "dis"
        params = list(nets[name].parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True)):
            p.grad = g
    for name in stepping:
        optimizers[name].step()


def instance_noise(args, epoch, i, n_batches):
    """--instance-noise's std at batch i of `epoch`: from the flag's value at the first batch of
    the run linearly to 0 at its last (Sønderby et al. 2017: noise that vanishes by the end)."""
    done = ((epoch - 1) * n_batches + i) / max(args.epochs * n_batches - 1, 1)
    return args.instance_noise * (1 - done)


def train_epoch(nets, optimizers, x, args, epoch, generator):
    for net in nets.values():
        net.train()
    n_batches = common.num_batches(len(x), args.batch_size)
    logged = {}
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, n_batches, f"epoch {epoch}")):
        with common.autocast(args, x.device):
            terms = (vae_losses(nets, x[idx], args, generator) if args.model == "vae" else
                     vaegan_losses(nets, x[idx], args, generator, instance_noise(args, epoch, i, n_batches)))
        step(nets, optimizers, terms, skip=("discriminator",) if i % args.dis_every else ())
        for name, value in terms.items():
            if args.model == "vaegan" or name not in ("encoder", "decoder"):  # the VAE's = its loss
                logged.setdefault(name, torch.empty(n_batches, device=x.device))[i] = value.detach()
    return logged


@torch.no_grad()
def evaluate(nets, x, args):
    """Test KL and reconstruction error (BCE summed over pixels, from z = μ), in eval mode: the
    batch means weighted by batch size, summed in float64 (Python floats)."""
    for net in nets.values():
        net.eval()
    sizes, means = [], []
    for idx in common.batch_indices(len(x), 1000, x.device):
        mu, logvar = nets["encoder"](x[idx])
        sizes.append(len(idx))
        means.append(torch.stack([pixel_bce(nets["decoder"](mu), x[idx]), kl_divergence(mu, logvar)]))
    recon, prior = zip(*torch.stack(means).tolist())  # (batches, 2) -> the two columns
    return {f"test_{k}": sum(n * v for n, v in zip(sizes, values)) / len(x)
            for k, values in (("recon", recon), ("prior", prior))}


@torch.no_grad()
def prior_samples(decoder, n, args, device):
    """n images Dec(z), z ~ N(0, I), for the sample-quality numbers (cnn.sample_quality)."""
    decoder.eval()
    z = torch.randn(n, args.latent_dim, generator=torch.Generator().manual_seed(args.seed + 2))
    return torch.cat([decoder.image(chunk.to(device)) for chunk in z.split(1000)]).cpu()


def make_optimizers(nets, args):
    """One Adam per network, by name, at --lr; β1 = 0.5 for the VAE-GAN as dcgan.py (Radford et
    al.), Adam's default 0.9 for the VAE."""
    betas = (0.9, 0.999) if args.model == "vae" else (0.5, 0.999)
    return {name: torch.optim.Adam(net.parameters(), lr=args.lr, betas=betas) for name, net in nets.items()}


def fit(nets, train_x, test_x, args, generator, stem):
    """Train for args.epochs (or, VAE only, until its test loss has not improved for --patience
    epochs), evaluating on the test set after every epoch; <stem>.ckpt and <stem>.pt after every
    epoch. Returns the Run."""
    optimizers = make_optimizers(nets, args)
    run = common.Run(args, stem, variant(args), nets, optimizers, generator)
    for epoch in range(run.done + 1, args.epochs + 1):
        logged = train_epoch(nets, optimizers, train_x, args, epoch, generator)
        common.check_finite(epoch, run.weights_path,  # D's mean outputs (d_*) are not losses
                            **{k: v for k, v in logged.items() if not k.startswith("d_")})
        record = {**{f"train_{k}": v.mean().item() for k, v in logged.items()},
                  **evaluate(nets, test_x, args)}
        if args.model == "vae":
            record["test_loss"] = record["test_recon"] + record["test_prior"]
        run.log(epoch, record)
        run.save(epoch)
        if common.stop_early(run.history, "test_loss", args.patience):  # VAE only (parse_args)
            break
    return run


# ----------------------------------------------------------------------------------------------
# FIGURES
# ----------------------------------------------------------------------------------------------
def curves(history, keys):
    """{label: (epochs, values)} for each {label: history key} that this run recorded (L_llike
    only with --dis-l)."""
    epochs = [r["epoch"] for r in history]
    return {label: (epochs, [r[key] for r in history]) for label, key in keys.items() if key in history[0]}


@torch.no_grad()
def figures(nets, test_x, args, name, history):
    out = Path(args.out_dir)
    encoder, decoder = nets["encoder"].eval(), nets["decoder"].eval()
    z = torch.randn(N_SHOWN, args.latent_dim, generator=torch.Generator().manual_seed(args.seed + 1))
    common.plot_image_rows(out / f"{name}_samples.png", {"x = Dec(z),\nz ~ N(0, I)": decoder.image(z.to(test_x.device))},
                           title=f"{name}: 10 images from p(z)")
    chosen = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(args.seed))[:N_SHOWN]
    images = test_x[chosen.to(test_x.device)]
    common.plot_image_rows(out / f"{name}_reconstructions.png",
                           {"test image": images, "Dec(μ(x))": decoder.image(encoder(images)[0])},
                           title=f"{name}: 10 random test images and their reconstructions")
    if args.model == "vae":
        panels = {"reconstruction (BCE, summed over pixels)": common.epoch_series(history, "recon"),
                  "KL(q(z|x) || N(0, I))": common.epoch_series(history, "prior")}
    else:
        encoder = "L_prior + L_llike" if args.dis_l else "L_prior + fooling"
        decoder = "γ·L_llike + fooling" if args.dis_l else "fooling"
        panels = {"encoder's objective and its terms (nats)":
                      curves(history, {f"objective: {encoder}": "train_encoder",
                                       "L_prior (KL)": "train_prior", "L_llike^Dis_l": "train_llike",
                                       **({} if args.dis_l else {"fooling": "train_fool"})}),
                  "decoder's objective and its terms (nats)":
                      curves(history, {f"objective: {decoder}": "train_decoder",
                                       **({"fooling, -log Dis(x̃) - log Dis(x_p)": "train_fool"}
                                          if args.dis_l else {})}),
                  "discriminator's objective (nats)": curves(history, {"-L_GAN": "train_dis"}),
                  "mean Dis output (its probability of real)":
                      curves(history, {"real x": "train_d_x", "reconstruction x̃": "train_d_recon",
                                       "prior sample x_p": "train_d_prior"})}
        if args.dis_l:  # the decoder's share of L_llike, as it enters its objective
            epochs = [r["epoch"] for r in history]
            panels["decoder's objective and its terms (nats)"]["γ·L_llike^Dis_l"] = (
                epochs, [args.gamma * r["train_llike"] for r in history])
    if args.model == "vaegan" and not args.dis_l:
        caption = (f"The encoder's objective is L_prior + fooling; L_prior is at most "
                   f"{max(r['train_prior'] for r in history):.2g} nats here, so where it is near 0 "
                   "the objective's curve lies on the fooling curve, and Dis scores x̃ and x_p alike "
                   "(q(z|x) ≈ N(0, I): both are decodings of draws from the prior). The decoder's "
                   "objective is the fooling term alone.")
    else:
        caption = None
    common.plot_panels(out / f"{name}_loss.png", panels, xlabel="epoch", caption=caption,
                       title=f"{name}: losses per network (means over each epoch)")


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    generator = common.seed_everything(args.seed)
    out, name = common.out_dir(args), run_name(args)
    if args.load:  # read before the data, so a wrong file fails at once
        checkpoint = common.load_checkpoint(args.load, variant(args))
        # an activation holds no weights, so the file's own args say which decoder it trained
        args.leaky_decoder = checkpoint["args"].get("leaky_decoder", False)
    nets = {part: net.to(device) for part, net in networks(args).items()}
    if args.load:
        run = common.load_run(args.load, variant(args), nets, checkpoint=checkpoint)
    (train_x, _), (test_x, _) = common.load_mnist_like("fashion-mnist", args.data_dir, device, args.limit)
    if not args.load:
        run = fit(nets, train_x, test_x, args, generator, out / name)
    figures(nets, test_x, args, name, run.history)
    samples = prior_samples(nets["decoder"], len(test_x), args, device)
    final = {"epochs_trained": run.history[-1]["epoch"], **evaluate(nets, test_x, args),
             **cnn.sample_quality(samples, test_x, train_x, args)}
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history,
                        final, **run.provenance())
    print(f"{name}: " + " | ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float)))


if __name__ == "__main__":
    common.run_main(main)
