"""VAEs on Galaxy Zoo images: assignment D, part 5 ("The Final Small-Project").

64x64 RGB galaxies in, the mean and log-variance of z (--latent-dim 50) out; three encoder/decoder
pairs, as the task names them (--arch), each decoder mirroring its encoder:
  mlp     a deep feed-forward net, three hidden layers of 512 units (ReLU) each way;
  conv    five stride-2 4x4 convolutions (BatchNorm, LeakyReLU 0.2), 32 → 512 filters: 64 → 2
          pixels a side; five transposed convolutions back;
  resnet  five residual blocks (ResidualBlock, He et al. 2016) of the same widths, each halving
          the side; the decoder's blocks double it (nearest-neighbour upsampling).
The widths (CHANNELS) are stored with the weights; the image side must survive their halvings.
--conditional makes it a conditional VAE (Sohn et al. 2015): encoder and decoder are given the
galaxy's class (one-hot, or Kaggle's 37 probabilities), so "generate this class" is literal.
Sharper galaxies: --gan-weight and --dis-l-weight add a discriminator's terms (a VAE-GAN, Larsen et
al. 2016), --likelihood gaussian a decoder of fitted variance (σ-VAE, Rybkin et al. 2021); --init
starts from a trained VAE. With labels, a judge (a CNN of real galaxies) scores every model: a
Fréchet distance in its features (galaxy_frechet) and, conditional, the class of its samples.

Loss (vae_loss): BCE summed over the 12,288 pixel values plus the closed-form KL. The targets are
intensities in [0, 1], so the BCE has a floor, each pixel's own entropy (bce_floor), reported
beside it with the per-pixel MSE. Reading the JPEGs (a centre crop of 207, the Kaggle winner's,
resized to 64; decoded once into a cache) and the label files is common.py's; a seeded
class-stratified split holds out --test-fraction.

Page: docs/galaxy_vae.md (what it does, results, answers, every flag)
Run:     python galaxy_vae.py --arch conv --data-dir ../shared/data --labels ../shared/data/galaxy/labels.csv
"""
import argparse
import json
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import cnn
import common

KIND = "galaxy_vae"  # what the weights files of every galaxy run say they hold
ARCHS = ("mlp", "conv", "resnet")
# conv and resnet: one stage per width, each halving the side (64 → 2 for these five). A new run
# builds these; --load builds the widths stored in its file.
CHANNELS = (32, 64, 128, 256, 512)
MLP_HIDDEN, MLP_LAYERS = 512, 3
N_SHOWN = 8  # originals, reconstructions and samples per figure row
CLASSIFIER = "galaxy_classifier"  # the judge's run name and checkpoint kind
EPOCHS = {"vae": 200, "classifier": 60}  # default --epochs (the assignment: at least 200 for the VAEs)
N_JUDGED = 500  # generated galaxies per class the judge classifies
# --gan-weight / --dis-l-weight: the discriminator's widths, and its Adam (Radford et al. 2016's
# rate and β1 for GAN discriminators; the VAE keeps --lr and Adam's defaults)
DIS_WIDTHS = (32, 64, 128, 256)
DIS_LR = 2e-4
DIS_BETAS = (0.5, 0.999)


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=None, batch_size=64, lr=1e-3,
                           data_help="used only for the default --images-dir")
    g = parser.add_argument_group("galaxy data")
    g.add_argument("--images-dir", help="folder of <GalaxyID>.jpg (default: <data-dir>/galaxy/images_training_rev1)")
    g.add_argument("--labels", help="training_solutions_rev1.csv (37 probability columns) or a "
                                    "GalaxyID,<label> CSV; without it: unsupervised, no class figures")
    g.add_argument("--class-scheme", choices=["argmax", "q1"], default="argmax",
                   help="37-column labels only: class = argmax of all 37 probabilities, or of "
                        "the first question (smooth / features or disk / star or artifact)")
    g.add_argument("--crop", type=common.positive_int, default=207, help="centre crop (pixels) before resizing")
    g.add_argument("--image-size", type=common.positive_int, default=64,
                   help="side of the resized images (conv, resnet: a multiple of 2^len(CHANNELS))")
    g.add_argument("--test-fraction", type=float, default=0.15, help="fraction of each class held out for testing")
    g.add_argument("--cache-dir", default="data/galaxy_cache", help="where the decoded images are cached")
    g.add_argument("--workers", type=common.positive_int, default=min(8, os.cpu_count() or 1),
                   help="processes that decode the JPEGs on the first run")
    m = parser.add_argument_group("model")
    m.add_argument("--experiment", choices=["vae", "classifier"], default="vae",
                   help="vae: a VAE of --arch; classifier: the judge, a small CNN trained on the real "
                        "training images' classes, that scores a conditional VAE's generated galaxies "
                        f"(default --epochs: {EPOCHS})")
    m.add_argument("--arch", choices=ARCHS, default="conv", help="encoder/decoder architecture")
    m.add_argument("--latent-dim", type=common.positive_int, default=50, help="size of z")
    m.add_argument("--kl-weight", type=common.nonnegative_float, default=1.0, help="KL term's weight (1: the ELBO)")
    m.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default="bernoulli",
                   help="the decoder's p(x|z): per-pixel Bernoulli (the BCE), or the σ-VAE's Gaussian "
                        "whose variance is fitted to each batch's squared error (Rybkin et al. 2021): "
                        "a smaller variance than the BCE's, so fine detail costs more to lose")
    m.add_argument("--conditional", action="store_true", help="give encoder and decoder the class (needs --labels)")
    m.add_argument("--condition", choices=["concat", "film"], default="concat",
                   help="--conditional: how the decoder is given the class: concatenated to z, or "
                        "also FiLM-modulating every hidden layer of the decoder")
    m.add_argument("--class-loss-weight", type=common.nonnegative_float, default=0.0, metavar="WEIGHT",
                   help="--conditional: add WEIGHT x the cross-entropy of a helper classifier (trained "
                        "alongside on the real training images) on decoded prior samples of random "
                        "classes, so the decoder draws what tells the classes apart (0: off)")
    m.add_argument("--helper-pool", type=common.positive_int, default=1, metavar="K",
                   help="--class-loss-weight: the helper sees real and generated images average-pooled "
                        "KxK (1: full resolution, where the decoder learns to fool it with a pixel texture)")
    m.add_argument("--gan-weight", type=common.nonnegative_float, default=0.0, metavar="WEIGHT",
                   help="VAE-GAN (Larsen et al. 2016): add WEIGHT x the GAN term -log D(x̃) - log D(x_p) "
                        "of a discriminator D trained alongside to tell real galaxies x from "
                        "reconstructions x̃ and decoded prior samples x_p (0: off)")
    m.add_argument("--dis-l-weight", type=common.nonnegative_float, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x L_llike^Dis_l = ½ Σ (Dis_l(x̃) - Dis_l(x))², the reconstruction "
                        "error in the features of D's last convolution (Larsen et al. Eq. 6-7), to "
                        "the pixel BCE (0: off; either weight trains D)")
    m.add_argument("--init", metavar="WEIGHTS",
                   help="start the VAE from a trained galaxy VAE's weights file (same architecture) "
                        "instead of at random, e.g. to add --gan-weight to a converged VAE for a few "
                        "epochs; the run's name ends in _from-<that file's name>")
    m.add_argument("--classifier-weights", metavar="FILE",
                   help="the judge (--experiment classifier) that scores the galaxies: the Fréchet "
                        "distance in its features, and a conditional model's class score (default: "
                        "galaxy_classifier.pt in --out-dir; without it neither)")
    m.add_argument("--sample-class", help="the class shown first in the class figures (default: the rarest)")
    m.add_argument("--compare", nargs="+", metavar="WEIGHTS",
                   help="no training: draw galaxy_vae_comparison.png from these VAE weights files: for "
                        "each class, real test galaxies beside each model's generated galaxies of that "
                        "class at the same size (an unconditional model's: the prior samples the judge "
                        "reads as that class); needs --labels and the judge")
    m.add_argument("--replot", metavar="METRICS",
                   help="no data, no model: redraw the loss figure of the run that wrote this "
                        "<run>_metrics.json from its history (for a run whose weights are not kept)")
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    if not 0 < args.test_fraction < 1:
        parser.error(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")
    if args.conditional and not args.labels:
        parser.error("--conditional needs --labels: the model is given each galaxy's class")
    if args.experiment == "classifier" and args.conditional:
        parser.error("--conditional is a VAE's; --experiment classifier trains the judge")
    if args.class_loss_weight and not args.conditional:
        parser.error("--class-loss-weight trains a --conditional model to draw the class it is given")
    if args.replot and (args.load or args.resume):
        parser.error("--replot draws from a metrics file alone: no --load or --resume")
    if args.init and (args.load or args.experiment == "classifier"):
        parser.error("--init starts a VAE's training from trained weights: not with --load or --experiment classifier")
    if args.compare and (args.load or args.resume or args.replot or not args.labels):
        parser.error("--compare draws trained models' galaxies by class: it needs --labels, and no "
                     "--load, --resume or --replot")
    if args.helper_pool != 1 and not args.class_loss_weight:
        parser.error("--helper-pool is how the --class-loss-weight helper sees the images")
    if args.experiment == "classifier" and (args.gan_weight or args.dis_l_weight):
        parser.error("--gan-weight and --dis-l-weight train a VAE's decoder; --experiment classifier trains the judge")
    if (args.gan_weight or args.dis_l_weight) and args.image_size % 2 ** len(DIS_WIDTHS):
        parser.error(f"the discriminator's {len(DIS_WIDTHS)} stride-2 convolutions need an --image-size "
                     f"that is a multiple of {2 ** len(DIS_WIDTHS)}, got {args.image_size}")
    if args.condition != "concat" and not args.conditional:
        parser.error(f"--condition {args.condition} is how a --conditional model gets the class")
    args.epochs = args.epochs or EPOCHS[args.experiment]
    args.images_dir = args.images_dir or str(Path(args.data_dir) / "galaxy" / "images_training_rev1")
    return args


# ----------------------------------------------------------------------------------------------
# MODELS
# ----------------------------------------------------------------------------------------------
def mlp_layers(sizes):
    """Linear layers between consecutive `sizes`, ReLU after all but the last."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return layers


class ResidualBlock(nn.Module):
    """out = act(F(x) + shortcut(x)), F = conv3x3 · BN · act · conv3x3 · BN (He et al. 2016, Fig. 2).

    scale 0.5 halves the side (the first convolution has stride 2), 2 doubles it (nearest-neighbour
    upsampling first); the shortcut is the identity when shape and channels are kept, otherwise a
    1x1 convolution (the projection shortcut of He et al., Eq. 2) after the same resampling."""

    def __init__(self, c_in, c_out, scale=1.0):
        super().__init__()
        stride = 2 if scale == 0.5 else 1
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if scale == 2 else nn.Identity()
        self.residual = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Identity() if c_in == c_out and scale == 1 else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        x = self.up(x)
        return self.act(self.residual(x) + self.shortcut(x))


def size_problem(size, channels):
    """Why `size` does not fit the conv/resnet stages of `channels` (each halves the side), or None."""
    if size % 2 ** len(channels):
        return (f"--image-size {size} does not fit the {len(channels)} stride-2 stages of the widths "
                f"{tuple(channels)}: it must be a multiple of 2^{len(channels)} = {2 ** len(channels)}")
    return None


def build_encoder(arch, size, channels):
    """Image (B, 3, size, size) → features (B, F); returns (module, F)."""
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), *mlp_layers([3 * size * size] + [MLP_HIDDEN] * MLP_LAYERS),
                             nn.ReLU()), MLP_HIDDEN
    stages, c_in = [], 3
    for c in channels:  # each stage halves the side: 64 → 32 → 16 → 8 → 4 → 2
        # conv: a 4x4 stride-2 convolution (side/2) · BN · LeakyReLU; resnet: a halving block
        stages.append(nn.Sequential(nn.Conv2d(c_in, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c),
                                    nn.LeakyReLU(0.2)) if arch == "conv" else ResidualBlock(c_in, c, 0.5))
        c_in = c
    side = size // 2 ** len(channels)  # 2 for 64 pixels and five stages
    return nn.Sequential(*stages, nn.Flatten()), channels[-1] * side * side  # (B, 512·2·2)


def build_decoder(arch, size, n_in, channels):
    """(B, n_in) → logits (B, 3, size, size), mirroring build_encoder."""
    if arch == "mlp":
        return nn.Sequential(*mlp_layers([n_in] + [MLP_HIDDEN] * MLP_LAYERS + [3 * size * size]),
                             nn.Unflatten(1, (3, size, size)))
    side = size // 2 ** len(channels)
    # (B, n_in) → (B, 512·2·2) → (B, 512, 2, 2): the encoder's last feature map
    layers = [nn.Linear(n_in, channels[-1] * side * side), nn.Unflatten(1, (channels[-1], side, side))]
    widths = channels[::-1]  # 512 → 256 → 128 → 64 → 32, each stage doubling the side
    for c_in, c_out in zip(widths, widths[1:]):
        # conv: a 4x4 stride-2 transposed convolution (side·2) · BN · LeakyReLU; resnet: a doubling block
        layers.append(nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                                    nn.LeakyReLU(0.2)) if arch == "conv" else ResidualBlock(c_in, c_out, 2))
    last = (nn.ConvTranspose2d(channels[0], 3, 4, 2, 1) if arch == "conv" else  # last stage → RGB logits
            nn.Sequential(ResidualBlock(channels[0], channels[0], 2), nn.Conv2d(channels[0], 3, 3, 1, 1)))
    return nn.Sequential(*layers, last)


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018): h ← h · (1 + γ(c)) + β(c), with γ and β
    one linear map of the condition c per feature (channel) of h. Starts as the identity (zeros)."""

    def __init__(self, cond_dim, features):
        super().__init__()
        self.to_gamma_beta = nn.Linear(cond_dim, 2 * features)
        nn.init.zeros_(self.to_gamma_beta.weight)
        nn.init.zeros_(self.to_gamma_beta.bias)

    def forward(self, h, c):  # h: (B, F) or (B, F, H, W); c: (B, cond_dim)
        gamma, beta = self.to_gamma_beta(c).chunk(2, dim=1)  # (B, F) each
        shape = (*gamma.shape, *[1] * (h.dim() - 2))  # broadcast over the pixels of a feature map
        return h * (1 + gamma.view(shape)) + beta.view(shape)


class GalaxyVAE(nn.Module):
    """q(z|x[, c]) = N(μ, diag σ²) and p(x|z[, c]) = Bernoulli(sigmoid(decoder logits)).
    cond_dim > 0 makes it conditional: the condition c (one-hot class, or 37 probabilities) is
    concatenated to the encoder's features and to z (Sohn et al. 2015, Sec. 4); condition="film"
    also modulates every hidden layer of the decoder by c (FiLM), so the class reaches each scale
    of the image, not only the input of the decoder. `channels`, the conv/resnet widths, is a
    structure parameter: saved with the weights, given back by --load."""

    def __init__(self, arch="conv", latent_dim=50, size=64, cond_dim=0, channels=CHANNELS, condition="concat"):
        super().__init__()
        self.cond_dim, self.channels = cond_dim, tuple(channels)
        self.encoder, n_features = build_encoder(arch, size, self.channels)
        self.to_mu = nn.Linear(n_features + cond_dim, latent_dim)
        self.to_logvar = nn.Linear(n_features + cond_dim, latent_dim)
        self.decoder = build_decoder(arch, size, latent_dim + cond_dim, self.channels)
        # FiLM after each hidden layer of the decoder: {its index in self.decoder: its width}
        hidden = ({2 * i + 1: MLP_HIDDEN for i in range(MLP_LAYERS)} if arch == "mlp" else  # the ReLUs
                  {i + 1: c for i, c in enumerate(self.channels[::-1])})  # the Unflatten, the stages
        self.film = nn.ModuleDict({str(i): FiLM(cond_dim, width) for i, width in hidden.items()}
                                  if cond_dim and condition == "film" else {})

    def _with(self, h, c):
        return torch.cat([h, c], 1) if self.cond_dim else h

    def encode(self, x, c=None):  # (B, 3, S, S) [, (B, cond_dim)] -> μ, log σ²: (B, z) each
        h = self._with(self.encoder(x), c)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z, c=None):  # (B, z) [, (B, cond_dim)] -> (B, 3, S, S) logits
        h = self._with(z, c)
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if str(i) in self.film:
                h = self.film[str(i)](h, c)
        return h

    def forward(self, x, c, generator):
        mu, logvar = self.encode(x, c)
        eps = common.to_device(torch.randn(mu.shape, generator=generator), mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterisation (Kingma & Welling 2014, Sec. 2.4)
        return self.decode(z, c), mu, logvar


class Discriminator(nn.Module):
    """D of the VAE-GAN (Larsen et al. 2016), DCGAN-sized: four 4x4 stride-2 convolutions
    (LeakyReLU 0.2, BatchNorm after all but the first), 32 → 256 channels (64 → 4 pixels a side),
    then one linear layer to the logit of "real". Dis_l, the features L_llike compares, is the
    last convolution's output, as the paper's (its fourth and last convolution), (B, 256·4·4)."""

    def __init__(self, size, widths=DIS_WIDTHS):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 4, 2, 1, bias=i == 0), *([nn.BatchNorm2d(c)] if i else []),
                       nn.LeakyReLU(0.2)]
            c_in = c
        self.dis_l = nn.Sequential(*layers, nn.Flatten())
        self.to_logit = nn.Linear(c_in * (size // 2 ** len(widths)) ** 2, 1)

    def forward(self, x):  # (B, 3, S, S) in [0, 1] -> logits (B,), Dis_l features (B, F)
        features = self.dis_l(x)
        return self.to_logit(features).squeeze(1), features


@torch.no_grad()
def decode(model, z, c):
    """Generation: the mean image of p(x|z[, c]), σ(decoder logits), on the CPU (B, 3, S, S)."""
    model.eval()
    return torch.sigmoid(model.decode(z, c)).float().cpu()


def class_condition(classes, k, n, device):
    """What the conditional model is given to generate class k, n times: the class's mean
    condition (its one-hot vector, or the mean of its galaxies' 37 probabilities)."""
    return classes["conditions"][k:k + 1].expand(n, -1).to(device)


# ----------------------------------------------------------------------------------------------
# LOSS
# ----------------------------------------------------------------------------------------------
def vae_loss(logits, x, mu, logvar, kl_weight, likelihood="bernoulli"):
    """Negative ELBO (Kingma & Welling 2014, Eq. 10), per example, as a β-VAE at kl_weight ≠ 1:

        bce = -Σ_pixels [x log σ(l) + (1 - x) log(1 - σ(l))]    (Bernoulli decoder, Appendix C.1)
        kl  = -½ Σ_j (1 + log σ_j² - μ_j² - σ_j²)                (closed form, Appendix B)
        loss = bce + kl_weight · kl

    likelihood "gaussian" (--likelihood) replaces bce in the loss by the σ-VAE's Gaussian decoder
    (Rybkin et al. 2021, Sec. 4): p(x|z) = N(σ(l), s² I) with the one s² that fits best, the
    batch's mean squared error (detached: at the best s its own gradient is 0), so

        nll = Σ_pixels (x - σ(l))² / (2 s²) + (D/2) log(2π s²)     (D = 3·S·S pixel values)

    bce is still returned (the yardstick every model is compared by). Summed over the pixel
    values and the latent dimensions; returned per example (B,), so training averages them over
    the batch and evaluation sums them over a split."""
    # in float32 even under --amp: sums of 12,288 terms; (B, 3, S, S) → (B,)
    bce = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none").flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).float().sum(1)  # (B, z) → (B,)
    reconstruction = bce
    if likelihood == "gaussian":
        squared = (torch.sigmoid(logits.float()) - x).pow(2).flatten(1)  # (B, D)
        variance = squared.detach().mean().clamp_min(1e-6)  # s², the best fit over the batch
        reconstruction = squared.sum(1) / (2 * variance) + 0.5 * squared.shape[1] * torch.log(2 * math.pi * variance)
    return {"bce": bce, "kl": kl, "loss": reconstruction + kl_weight * kl}


def adversarial_terms(model, discriminator, images, logits, cond, generator):
    """The VAE-GAN's terms for one batch (Larsen et al. 2016; each a batch mean): x the real
    images, x̃ = σ(logits) their reconstructions, x_p = σ(Dec(z_p[, c])) with z_p ~ N(0, I)
    decoded given the batch's own conditions (so D sees the classes as often as in the data):

        fool  = -log D(x̃) - log D(x_p)                   the VAE's side of L_GAN, non-saturating
        llike = ½ Σ_f (Dis_l(x̃) - Dis_l(x))²              L_llike^Dis_l (Eq. 6-7), Dis_l(x) the target
        dis   = -[log D(x) + log(1 - D(x̃)) + log(1 - D(x_p))]   D's loss (-L_GAN, Eq. 5, as Algorithm 1)

    The VAE descends bce + kl_weight·kl + --gan-weight·fool + --dis-l-weight·llike: the pixel BCE
    stays (the reconstructions' yardstick is the plain VAE's BCE) and the encoder and decoder
    share one objective, unlike the paper's split (vaegan.py follows that). Also D's mean output
    on real and on prior images, for the log."""
    z = common.to_device(torch.randn(len(images), model.to_mu.out_features, generator=generator), images.device)
    reconstructions, prior = torch.sigmoid(logits), torch.sigmoid(model.decode(z, cond))
    (real, real_features), (recon, recon_features), (fake, _) = (
        discriminator(x) for x in (images, reconstructions, prior))
    real, recon, fake = real.float(), recon.float(), fake.float()
    bce = F.binary_cross_entropy_with_logits
    return {"fool": bce(recon, torch.ones_like(recon)) + bce(fake, torch.ones_like(fake)),
            "llike": 0.5 * (recon_features.float() - real_features.detach().float()).pow(2).sum(1).mean(),
            "dis": (bce(real, torch.ones_like(real)) + bce(recon, torch.zeros_like(recon))
                    + bce(fake, torch.zeros_like(fake))),
            "d_real": torch.sigmoid(real).mean(), "d_prior": torch.sigmoid(fake).mean()}


def bce_floor(x):
    """The least BCE any decoder can reach on x: Σ_pixels H(x) = -Σ [x log x + (1-x) log(1-x)]
    (the BCE of predicting x exactly), per example (B,). Zero only for 0/1 images."""
    return F.binary_cross_entropy(x, x, reduction="none").flatten(1).sum(1)


def pixel_mse(logits, x):
    """Mean squared error per pixel value between σ(l) and x, per example (B,): no floor above 0."""
    return (torch.sigmoid(logits.float()) - x).pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------
# TRAINING AND EVALUATION
# ----------------------------------------------------------------------------------------------
def as_float(images):
    """uint8 (B, 3, S, S) → float in [0, 1]; the data stay uint8 on the device (a quarter of the
    memory: 61,578 images at 64x64 are 0.76 GB) and each batch is converted when used."""
    return images.float().div_(255)


def train_epoch(model, optimizer, data, args, epoch, generator, helper=None, discriminator=None):
    """One pass minimising vae_loss (averaged over each batch); per-batch bce, kl, mse. With a
    helper (--class-loss-weight), each step also adds the weight times class_loss to the VAE's
    objective and trains the helper on the real batch (per-batch "class" and "helper" terms).
    With a discriminator (--gan-weight, --dis-l-weight), each step adds the weighted fool and
    llike terms of adversarial_terms and steps D on its "dis" loss from the same forward pass
    (Algorithm 1 of Larsen et al.: every network updated from one set of images)."""
    model.train()
    x, c = data["x"], data["c"]
    n_batches = common.num_batches(len(x), args.batch_size)
    # one value per batch and term, for the finite check and the epoch's means in the log
    names = (("bce", "kl", "mse") + (("class", "helper") if helper else ())
             + (("fool", "llike", "dis", "d_real", "d_prior") if discriminator else ()))
    terms = {k: torch.empty(n_batches, device=x.device) for k in names}
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, n_batches, f"epoch {epoch}")):
        images, cond = as_float(x[idx]), (c[idx] if c is not None else None)  # (B, 3, S, S), (B, C)
        with common.autocast(args, x.device):
            logits, mu, logvar = model(images, cond, generator)
            loss = vae_loss(logits, images, mu, logvar, args.kl_weight, args.likelihood)
            objective = loss["loss"].mean()  # the negative ELBO, averaged over the batch
            if helper:
                terms["class"][i] = generated_ce = class_loss(model, helper, data, len(idx), args, generator)
                objective = objective + args.class_loss_weight * generated_ce
            if discriminator:
                discriminator.train()
                adversarial = adversarial_terms(model, discriminator, images, logits, cond, generator)
                objective = objective + args.gan_weight * adversarial["fool"] + args.dis_l_weight * adversarial["llike"]
        optimizer.zero_grad(set_to_none=True)
        if discriminator:  # D's gradient of its own loss only; the VAE's objective reaches the VAE only
            dis_parameters = list(discriminator.parameters())
            for p, g in zip(dis_parameters, torch.autograd.grad(adversarial["dis"], dis_parameters, retain_graph=True)):
                p.grad = g
            for name in ("fool", "llike", "dis", "d_real", "d_prior"):
                terms[name][i] = adversarial[name].detach()
        objective.backward(inputs=list(model.parameters()))
        optimizer.step()
        if discriminator:
            discriminator.optimizer.step()
        if helper:
            terms["helper"][i] = helper_step(helper, images, data["y"][idx], data, args, generator)
        terms["bce"][i], terms["kl"][i] = loss["bce"].mean().detach(), loss["kl"].mean().detach()
        terms["mse"][i] = pixel_mse(logits.detach(), images).mean()
    return terms


def class_loss(model, helper, data, n, args, generator):
    """--class-loss-weight's term: n prior samples z ~ N(0, I) decoded given classes drawn
    uniformly, and the cross-entropy of the helper's reading of them against the class asked for
    (the auxiliary-classifier idea of AC-GAN, Odena et al. 2017, on a VAE's samples). The helper
    is fixed here (eval mode, no gradient to its weights): only the decoder learns from it. It
    sees the images average-pooled by --helper-pool: a pixel texture cannot tell it the class, so
    the decoder has to change the coarse picture (shape, colour, arms)."""
    device = data["x"].device
    asked = torch.randint(len(data["conditions"]), (n,), generator=generator).to(device)
    z = common.to_device(torch.randn(n, model.to_mu.out_features, generator=generator), device)
    generated = torch.sigmoid(model.decode(z, data["conditions"][asked]).float())
    helper.eval().requires_grad_(False)
    loss = F.cross_entropy(helper(F.avg_pool2d(generated, args.helper_pool)).float(), asked)
    helper.train().requires_grad_(True)
    return loss


def helper_step(helper, images, labels, data, args, generator):
    """One step of the helper on the real batch, pooled as in class_loss, as the judge is trained
    (class-weighted cross-entropy, random symmetries), with its own Adam at --lr. Returns its loss."""
    pooled = F.avg_pool2d(images, args.helper_pool)
    with common.autocast(args, images.device):
        loss = F.cross_entropy(helper(random_symmetry(pooled, generator)).float(), labels,
                               weight=data["class_weights"])
    helper.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    helper.optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model, data, args, batch_size=500):
    """Per-example means of bce, kl, loss and mse over a whole split, in eval mode; z drawn with
    a fixed-seed generator, so --load reproduces these numbers exactly. Also μ of every image
    (on the CPU, (N, latent_dim), as latent_means gives it): the final block's latent statistics
    without a second pass over the split."""
    model.eval()
    x, c = data["x"], data["c"]
    generator = torch.Generator().manual_seed(args.seed)
    sums = torch.zeros(4, device=x.device)  # Σ over the split of bce, kl, loss and mse
    means = []
    for idx in common.batch_indices(len(x), batch_size, x.device):
        images = as_float(x[idx])
        logits, mu, logvar = model(images, c[idx] if c is not None else None, generator)
        loss = vae_loss(logits, images, mu, logvar, args.kl_weight, args.likelihood)
        sums += torch.stack([loss["bce"].sum(), loss["kl"].sum(), loss["loss"].sum(),
                             pixel_mse(logits, images).sum()])
        means.append(mu.float().cpu())
    return dict(zip(("bce", "kl", "loss", "mse"), (s / len(x) for s in sums.tolist()))), torch.cat(means)


def fit(model, train, test, args, stem, generator, classes, start=None):
    """Adam at a constant --lr (so a run extended by --resume continues the same descent); one test
    evaluation per epoch, recorded against the iteration count. `classes` is saved beside the
    weights (--load checks that a conditional model is given the classes it learned), and so are
    the model's conv/resnet widths (--load builds them). --class-loss-weight trains a helper
    classifier alongside (with --init, the helper of its checkpoint `start` when it holds one), --gan-weight
    and --dis-l-weight a discriminator with its own Adam
    (DIS_LR, DIS_BETAS): both saved in the .ckpt for --resume, not in the .pt (--load needs only
    the VAE)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    models, optimizers, helper = {"model": model}, {"optimizer": optimizer}, None
    if args.class_loss_weight:
        helper = GalaxyClassifier(len(classes["names"])).to(train["x"].device)
        helper.optimizer = torch.optim.Adam(helper.parameters(), lr=args.lr)
        if start and "helper" in start["models"]:
            common.load_weights(args.init, KIND, {"helper": helper}, "--init", start)  # the trained helper too
        models["helper"], optimizers["helper_optimizer"] = helper, helper.optimizer
        train = {**train, "conditions": classes["conditions"].to(train["x"].device),
                 "class_weights": class_weights(train["y"], len(classes["names"]))}
    discriminator = None
    if args.gan_weight or args.dis_l_weight:
        discriminator = Discriminator(args.image_size).to(train["x"].device)
        discriminator.optimizer = torch.optim.Adam(discriminator.parameters(), lr=DIS_LR, betas=DIS_BETAS)
        models["discriminator"], optimizers["discriminator_optimizer"] = discriminator, discriminator.optimizer
    run = common.Run(args, stem, KIND, models, optimizers, generator, for_load=("model",))
    per_epoch = common.num_batches(len(train["x"]), args.batch_size)
    for epoch in range(run.done + 1, args.epochs + 1):
        terms = train_epoch(model, optimizer, train, args, epoch, generator, helper, discriminator)
        common.check_finite(epoch, run.weights_path, **terms)
        run.log(epoch, {"iteration": epoch * per_epoch,
                        **{f"train_{k}": v.mean().item() for k, v in terms.items()},
                        **{f"test_{k}": v for k, v in evaluate(model, test, args)[0].items()}})
        run.save(epoch, classes=classes, channels=list(model.channels))
        if common.stop_early(run.history, "test_loss", args.patience):
            break
    return run


# ----------------------------------------------------------------------------------------------
# METRICS: what the run is judged by (the final block)
# ----------------------------------------------------------------------------------------------
def final_metrics(model, train, test, classes, args, run):
    """The run's final block: loss terms, BCE floor and the BCE above it on both splits, the
    active latent dimensions and (with classes) the linear probe of μ."""
    final, means = {"epochs_trained": run.history[-1]["epoch"], "parameters": n_parameters(model)}, {}
    for part, data in (("train", train), ("test", test)):
        scores, means[part] = evaluate(model, data, args)
        final.update({f"{part}_{k}": v for k, v in scores.items()})
        floors = [bce_floor(as_float(data["x"][idx])).sum() for idx in
                  common.batch_indices(len(data["x"]), 500, data["x"].device)]
        final[f"{part}_bce_floor"] = torch.stack(floors).sum().item() / len(data["x"])
        final[f"{part}_bce_above_floor"] = final[f"{part}_bce"] - final[f"{part}_bce_floor"]
    final["active_latent_dims"] = active_dims(means["test"])
    if classes:
        final.update(latent_probe(means["train"], means["test"], train["y"], test["y"], len(classes["names"])))
    return final


def n_parameters(model):
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def latent_means(model, data):
    """μ of q(z|x[, c]) for every image of a split, on the CPU (N, latent_dim)."""
    model.eval()
    return torch.cat([model.encode(as_float(data["x"][idx]), data["c"][idx] if model.cond_dim else None)[0].float().cpu()
                      for idx in common.batch_indices(len(data["x"]), 500, data["x"].device)])


def active_dims(means, threshold=0.01):
    """Latent dimensions the model uses: those whose μ (`means`, (N, latent_dim) over a split)
    varies across images, Var_x[μ_j] > 0.01 (Burda et al. 2016, Sec. 5.2). The others sit at the
    prior, μ ≈ 0 for every image."""
    return int((means.var(0) > threshold).sum())


@torch.no_grad()
def latent_probe(train_means, test_means, y_train, y_test, n_classes, steps=200):
    """How much of the class a straight line through the latent space finds: multinomial logistic
    regression on the standardised μ of the training set (class-weighted, so both classes count
    alike; LBFGS), scored on the test set's μ. Returns accuracy and balanced accuracy (the mean
    of the per-class recalls; 1/K for any constant guess)."""
    mus = [train_means.double(), test_means.double()]
    mean, std = mus[0].mean(0), mus[0].std(0).clamp_min(1e-8)  # the training set's, for both splits
    (x_train, x_test), (y_train, y_test) = [(m - mean) / std for m in mus], [y_train.cpu(), y_test.cpu()]
    weights = class_weights(y_train, n_classes).double()
    linear = nn.Linear(x_train.shape[1], n_classes).double()
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps)

    def closure():
        optimizer.zero_grad()
        with torch.enable_grad():
            # weighted cross-entropy plus a small L2 penalty (separable data has no finite optimum)
            loss = F.cross_entropy(linear(x_train), y_train, weight=weights) + 1e-3 * linear.weight.pow(2).sum()
            loss.backward()
        return loss

    optimizer.step(closure)
    predicted = linear(x_test).argmax(1)
    return {"latent_probe_test_accuracy": (predicted == y_test).double().mean().item(),
            "latent_probe_test_balanced_accuracy": balanced_accuracy(predicted, y_test, n_classes)}


def class_weights(y, n_classes):
    """n / (K · n_k) per class: every class weighs as much in a loss as in a balanced set."""
    return len(y) / (n_classes * torch.bincount(y, minlength=n_classes).clamp_min(1).float())


def balanced_accuracy(predicted, labels, n_classes):
    """The mean of the per-class recalls over the classes present (1/K for any constant guess)."""
    recalls = [(predicted[labels == k] == k).double().mean() for k in range(n_classes) if (labels == k).any()]
    return torch.stack(recalls).mean().item()


# ----------------------------------------------------------------------------------------------
# THE JUDGE: a classifier of real galaxies that scores the generated ones
# ----------------------------------------------------------------------------------------------
class GalaxyClassifier(nn.Module):
    """A small CNN: four 3x3 stride-2 convolutions (BatchNorm, LeakyReLU 0.2), 32 → 256 channels
    (64 → 4 pixels a side), global average pooling, one linear layer to the class logits."""

    def __init__(self, n_classes, widths=(32, 64, 128, 256)):
        super().__init__()
        layers, c_in = [], 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(0.2)]
            c_in = c
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_classes))

    def forward(self, x):  # (B, 3, S, S) in [0, 1] -> (B, K) logits
        return self.net(x)


def random_symmetry(images, generator):
    """A galaxy has no up and no left: each image mirrored or not, then turned by a random
    multiple of 90° (the eight symmetries of the square), drawn per image."""
    turns = torch.randint(4, (len(images),), generator=generator).to(images.device)
    mirror = torch.randint(2, (len(images),), generator=generator).to(images.device).bool()
    images = torch.where(mirror[:, None, None, None], images.flip(3), images)
    turned = images.clone()
    for k in (1, 2, 3):
        turned[turns == k] = torch.rot90(images[turns == k], k, dims=(2, 3))
    return turned


def fit_classifier(model, train, test, args, stem, generator, classes):
    """Adam on the class-weighted cross-entropy (the rare class counts as much as the common one),
    its rate decaying from --lr to 0 along a cosine (the last epochs settle instead of jumping
    between solutions), each training batch randomly mirrored and turned; the test split's
    cross-entropy and balanced accuracy after every epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    weights = class_weights(train["y"], len(classes["names"]))
    run = common.Run(args, stem, CLASSIFIER, {"model": model}, {"optimizer": optimizer}, generator)
    x, y = train["x"], train["y"]
    n_batches = common.num_batches(len(x), args.batch_size)
    for epoch in range(run.done + 1, args.epochs + 1):
        model.train()
        losses = torch.empty(n_batches, device=x.device)
        batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
        for i, idx in enumerate(common.progress(batches, n_batches, f"epoch {epoch}")):
            common.set_lr(optimizer, common.cosine_lr(args.lr, (epoch - 1) * n_batches + i, args.epochs * n_batches))
            images = random_symmetry(as_float(x[idx]), generator)
            with common.autocast(args, x.device):
                loss = F.cross_entropy(model(images).float(), y[idx], weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[i] = loss.detach()
        common.check_finite(epoch, run.weights_path, cross_entropy=losses)
        run.log(epoch, {"train_ce": losses.mean().item(), **judge_real(model, test, classes, weights)})
        run.save(epoch, classes=classes)
        if common.stop_early(run.history, "test_ce", args.patience):
            break
    return run


@torch.no_grad()
def classify(model, images, batch_size=500):
    """The judge's class for each of `images` (float in [0, 1], on its device), in eval mode."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def judge_real(model, data, classes, weights=None):
    """The judge on real images of a split: (class-weighted) cross-entropy, accuracy, balanced
    accuracy."""
    model.eval()
    logits = torch.cat([model(as_float(data["x"][idx])).float()
                        for idx in common.batch_indices(len(data["x"]), 500, data["x"].device)])
    predicted = logits.argmax(1)
    return {"test_ce": F.cross_entropy(logits, data["y"], weight=weights).item(),
            "test_acc": (predicted == data["y"]).float().mean().item(),
            "test_balanced_accuracy": balanced_accuracy(predicted, data["y"], len(classes["names"]))}


@torch.no_grad()
def reconstructed_class_score(judge, reconstructed, data, classes):
    """The yardstick beside generated_class_score: the judge's balanced accuracy on the
    reconstructions (`reconstructed`: decoded μ, given their own class) of the real images of
    `data` — how much of the class the decoder can draw at all."""
    seen = classify(judge, reconstructed.to(data["x"].device))
    return balanced_accuracy(seen, data["y"], len(classes["names"]))


@torch.no_grad()
def generated_class_score(model, judge, classes, seed, n=N_JUDGED):
    """Do the conditional model's galaxies show the class they were asked for? n prior samples
    z ~ N(0, I) decoded given each class, classified by the judge (trained on real images only):
    the balanced accuracy of "the class asked for" against "the class the judge sees", and each
    class's recall. A classifier of real images scoring generated ones is GAN-test (Shmelkov et
    al. 2018), the mirror of the classification accuracy score (Ravuri & Vinyals 2019)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    asked, seen = [], []
    for k in range(len(classes["names"])):
        z = torch.randn(n, model.to_mu.out_features, generator=generator).to(device)
        images = decode(model, z, class_condition(classes, k, n, device)).to(device)
        asked.append(torch.full((n,), k))
        seen.append(classify(judge, images).cpu())
    asked, seen = torch.cat(asked), torch.cat(seen)
    return {"generated_balanced_accuracy": balanced_accuracy(seen, asked, len(classes["names"])),
            **{f"generated_recall_{name}": (seen[asked == k] == k).float().mean().item()
               for k, name in enumerate(classes["names"])}}


# ----------------------------------------------------------------------------------------------
# SAMPLE QUALITY: a Fréchet distance in the judge's features
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def judge_features(judge, images, batch_size=500):
    """The judge's penultimate features (its global average pool of the last 256 channels) of
    `images` (float in [0, 1], any device): (N, 256) on the CPU, in eval mode."""
    judge.eval()
    device, trunk = next(judge.parameters()).device, judge.net[:-1]  # all but the last linear layer
    return torch.cat([trunk(images[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def reconstructions(model, data):
    """σ(Dec(μ)) of every image of a split, given its own class (a conditional model): (N, 3, S, S)."""
    model.eval()  # before the first encode: BatchNorm with its running statistics
    decoded = []
    for idx in common.batch_indices(len(data["x"]), 500, data["x"].device):
        cond = data["c"][idx] if model.cond_dim else None
        decoded.append(decode(model, model.encode(as_float(data["x"][idx]), cond)[0], cond))
    return torch.cat(decoded)


@torch.no_grad()
def prior_samples(model, classes, counts, seed):
    """The model's generated galaxies: sum(counts) prior draws z ~ N(0, I) (a generator seeded
    by `seed`) decoded; a conditional model's first counts[0] given class 0, the next counts[1]
    given class 1, ...: (N, 3, S, S) on the CPU, and the class each was asked for (None when the
    model is unconditional)."""
    device = next(model.parameters()).device
    z = torch.randn(sum(counts), model.to_mu.out_features, generator=torch.Generator().manual_seed(seed))
    if not model.cond_dim:
        return torch.cat([decode(model, chunk.to(device), None) for chunk in z.split(500)]), None
    asked = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    conditions = classes["conditions"][asked]
    return torch.cat([decode(model, zs.to(device), cs.to(device))
                      for zs, cs in zip(z.split(500), conditions.split(500))]), asked


def galaxy_frechet(model, judge, train, test, reconstructed, classes, seed):
    """How galaxy-like the model's galaxies are: the Fréchet distance (cnn.frechet_distance, the
    FID formula) between the judge's features of a set of images and of the real test galaxies,
    overall and per class (against the test galaxies of that class), for three sets of as many
    images of each class as the test split holds:
      generated      prior samples (prior_samples; a conditional model's given each class, an
                     unconditional model's unlabelled: overall only);
      reconstructed  the model's reconstructions of the test galaxies (`reconstructed`, from
                     reconstructions: what its decoder can draw when it is told what to draw);
      floor          real training galaxies (a seeded draw per class): what a perfect generator
                     scores at this sample count (fewer samples score higher, so compare only at
                     the same count, frechet_n).
    The judge is the one network here trained on real galaxies alone (the helper of
    --class-loss-weight and the discriminator of --gan-weight learn against a model's images), and
    its features are nearly blind to a galaxy's orientation (it learned under random symmetries)."""
    names, y_train, y_test = classes["names"], train["y"].cpu(), test["y"].cpu()
    counts = torch.bincount(y_test, minlength=len(names)).tolist()
    draw = torch.Generator().manual_seed(seed + 1)
    chosen = torch.cat([(y_train == k).nonzero().flatten()[torch.randperm(int((y_train == k).sum()), generator=draw)[:n]]
                        for k, n in enumerate(counts)])
    generated, asked = prior_samples(model, classes, counts, seed)
    sets = {"generated": (judge_features(judge, generated), asked),
            "reconstructed": (judge_features(judge, reconstructed), y_test),
            "floor": (judge_features(judge, as_float(train["x"][chosen.to(train["x"].device)])), y_train[chosen])}
    real = judge_features(judge, as_float(test["x"]))
    result = {"frechet_n": len(real)}
    for name, (features, labels) in sets.items():
        result[f"frechet_{name}"] = cnn.frechet_distance(features, real)
        for k, cls in enumerate(names):
            if labels is not None and min(int((labels == k).sum()), counts[k]) > 1:  # a covariance needs two
                result[f"frechet_{name}_{cls}"] = cnn.frechet_distance(features[labels == k], real[y_test == k])
    return result


# ----------------------------------------------------------------------------------------------
# FIGURES
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def class_figures(model, data, classes, args, name, generator):
    """Each class in turn (--sample-class first): test originals, their reconstructions and, for
    a conditional model, prior draws z ~ N(0, I) decoded given that class, so generated galaxies
    sit beside real ones of the class asked for. An unconditional model cannot be asked for a
    class: its prior draws are one unlabelled block at the end (a draw from q(z|x) of an
    original would only be a noisier reconstruction, not a generated galaxy)."""
    device = data["x"].device
    model.eval()
    order = sorted(range(len(classes["names"])), key=lambda k: classes["names"][k] != args.sample_class)
    rows = {}
    for k in order:
        cls = classes["names"][k]
        chosen = (data["y"] == k).nonzero().flatten()[:N_SHOWN]
        originals = as_float(data["x"][chosen])
        cond = data["c"][chosen] if model.cond_dim else None
        mu, _ = model.encode(originals, cond)
        rows[f"{cls}:\noriginals"] = originals.cpu()
        rows[f"{cls}:\nreconstructions\n(decoded μ)"] = decode(model, mu, cond)
        if model.cond_dim:
            z = torch.randn(N_SHOWN, args.latent_dim, generator=generator).to(device)
            rows[f"{cls}:\ngenerated\n(z ~ N(0, I)\ngiven {cls})"] = decode(
                model, z, class_condition(classes, k, N_SHOWN, device))
    if model.cond_dim:
        how = "generated = prior draws decoded given the class"
    else:
        z = torch.randn(N_SHOWN, args.latent_dim, generator=generator).to(device)
        rows["generated\n(z ~ N(0, I);\nno class: the\nmodel is\nunconditional)"] = decode(model, z, None)
        how = "unconditional model: its generated galaxies (last row) have no class"
    common.plot_image_rows(Path(args.out_dir) / f"{name}_class_samples.png", rows,
                           title=f"{name}: test galaxies of each class, their reconstructions;\n{how}")


@torch.no_grad()
def sample_figure(model, classes, args, name, device, generator):
    """Conditional: the same N_SHOWN prior draws z ~ N(0, I) decoded under every class, one block
    per class, so what changes between blocks at one position is the class alone.
    Unconditional: 3·N_SHOWN decoded prior draws (the model's generated galaxies)."""
    if model.cond_dim:
        z = torch.randn(N_SHOWN, args.latent_dim, generator=generator).to(device)
        rows = {cls: decode(model, z, class_condition(classes, k, len(z), device))
                for k, cls in enumerate(classes["names"])}
        title = (f"{name}: the same z ~ N(0, I) decoded given each class\n"
                 "(one block per class; the same position, the same z)")
        per_row = N_SHOWN // 2
    else:
        z = torch.randn(3 * N_SHOWN, args.latent_dim, generator=generator).to(device)
        rows = {"z ~ N(0, I)": decode(model, z, None)}
        title, per_row = f"{name}: decoded prior samples", N_SHOWN
    common.plot_image_rows(Path(args.out_dir) / f"{name}_samples.png", rows, title=title, nrow=per_row)


@torch.no_grad()
def latent_figure(model, data, classes, args, name):
    """μ of q(z|x) over the test set, projected on its first two principal components (the
    latent is wider than 2), coloured by class."""
    mus = latent_means(model, data)
    centred = mus - mus.mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    explained = (s[:2] ** 2 / (s ** 2).sum()).tolist()
    common.plot_scatter(Path(args.out_dir) / f"{name}_latent.png", {"test set": centred @ v[:2].T},
                        data["y"], classes["names"], title=f"{name}: means of q(z|x),\nfirst two "
                        f"principal components of the {args.latent_dim}-d latent",
                        xlabel=f"PC1 ({explained[0]:.0%} of the variance)",
                        ylabel=f"PC2 ({explained[1]:.0%} of the variance)")


# What to look for in weight_figure's three panels (encoder's first layer, its second layer seen
# on the image, decoder's last), per --arch
WEIGHT_CAPTIONS = {
    "mlp": ("Each unit weighs every pixel value: a few show a blob or\na bright spot; most are the "
            "random start's pixel\nnoise, which training barely moved.",
            "Second-layer units mix the first layer's: a faint\nlighter or darker disc at the centre, "
            "where the\ngalaxies are, under the first layer's noise.",
            "Each unit adds a whole image: blurry galaxy-sized\ntemplates (a smooth centre in a "
            "mottled surround)\nthat the decoder mixes; a tile of noise is a unit\nit hardly uses."),
    "conv": ("4x4 patches: look for brightness gradients (edges:\nlight on one side, dark on the "
             "other) and colour-\nopponent patches (blue against orange).",
             "Each second-layer filter on a 10x10 patch of the image:\ncentre-surround spots "
             "(a bright centre in a dark ring,\nor the reverse) and colour blobs, built from 4x4 ones.",
             "Each channel stamps a 4x4 patch per pixel of the\nlast feature map: an even tile "
             "paints a colour,\na graded one a texture."),
    "resnet": ("3x3 filters, each followed by BatchNorm: look for\ngradients and colour-opponent "
               "patches.",
               "The first block's second convolution on a 7x7 patch\nof the image: larger edges "
               "and colour blobs.",
               "The last 3x3 convolution mixes 32 channels into RGB:\neach tile is what one "
               "channel adds around a pixel.")}


def rgb_tiles(layer, image_size):
    """The weights of a layer on the image side as RGB tiles (N, 3, h, w): for the encoder's first
    layer, what each filter (mlp: hidden unit) responds to; for the decoder's last, what each
    input channel (mlp: hidden unit) paints into the image."""
    w = layer.weight.detach().float().cpu()
    if isinstance(layer, nn.Linear):  # (out, in): the 3·S·S pixels are the input or the output
        w = w if w.shape[1] == 3 * image_size ** 2 else w.T
        return w.reshape(len(w), 3, image_size, image_size)
    if isinstance(layer, nn.ConvTranspose2d):  # (in, 3, k, k): each input channel's stamp
        return w
    # Conv2d: (out, in, k, k); a last layer's input pixel adds the flipped kernel around it
    return w if w.shape[1] == 3 else w.transpose(0, 1).flip(2, 3)


@torch.no_grad()
def second_layer_tiles(encoder, image_size):
    """The encoder's second layer seen on the image, linearised (the non-linearity between the
    two layers left out): mlp, W2·W1, each second-layer unit as a 3xSxS template; conv and
    resnet, each second-layer filter composed with the first layer's filters through the
    BatchNorm scale γ/√(var + ε) between them: K_o = Σ_c W2[o, c] ⊛ (scale_c · W1[c]), the
    first layer's stride apart (a transposed convolution), a (3, h, w) patch of the image."""
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    if linears:
        w = linears[1].weight.float() @ linears[0].weight.float()  # (512, 3·S·S)
        return w.cpu().reshape(len(w), 3, image_size, image_size)
    first, second = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)][:2]
    norm = next(m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d))  # the one after `first`
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return F.conv_transpose2d(second.weight.float() * scale[None, :, None, None].float(),
                              first.weight.float(), stride=first.stride).cpu()


def own_scale(tiles, side=32):
    """Each tile stretched to its own largest |w| around 0 (0 → mid grey, ±max → full colour), so
    the pattern of a filter of small weights shows; small kernels enlarged (nearest) to about
    `side` pixels. Returns the tiles in [0, 1] and the range of the per-tile maxima."""
    peak = tiles.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
    times = max(1, side // tiles.shape[-1])
    grown = (0.5 + 0.5 * tiles / peak).repeat_interleave(times, 2).repeat_interleave(times, 3)
    return grown, (peak.min().item(), peak.max().item())


def neighbour_correlation(tiles):
    """Correlation of horizontally neighbouring weights: about 0 for random noise (the start of
    training), near 1 for smooth patterns."""
    left, right = tiles[..., :-1].flatten(), tiles[..., 1:].flatten()
    return torch.corrcoef(torch.stack([left, right]))[0, 1].item()


def weight_figure(model, args, name, n_units=16):
    """Three panels of RGB tiles, each tile on its own scale (grey = 0): the encoder's first
    layer (all filters; mlp: the first `n_units` hidden units, each a template of the image), its
    second layer seen on the image (second_layer_tiles), and the decoder's last layer (what each
    channel or unit paints); below each, what a student should see in it (WEIGHT_CAPTIONS) and
    how smooth its tiles are (neighbour_correlation)."""
    from torchvision.utils import make_grid  # imported here, not at the top: see common.dataset_class

    def on_the_image(part, prefix, side):  # side "in": layers reading the image; "out": writing it
        pixels = {nn.Linear: 3 * args.image_size ** 2, nn.Conv2d: 3, nn.ConvTranspose2d: 3}
        return [(f"{prefix}.{n}", m) for n, m in part.named_modules() if type(m) in pixels and
                getattr(m, f"{side}_features" if type(m) is nn.Linear else f"{side}_channels") == pixels[type(m)]]

    (first_name, first), (last_name, last) = (on_the_image(model.encoder, "encoder", "in")[0],
                                              on_the_image(model.decoder, "decoder", "out")[-1])
    unit = "hidden unit" if isinstance(first, nn.Linear) else "channel"
    panels = {f"encoder's first layer ({first_name}):\nwhat each {unit} responds to": rgb_tiles(first, args.image_size),
              f"encoder's second layer, on the image\n(linearised through the first): what each responds to":
                  second_layer_tiles(model.encoder, args.image_size),
              f"decoder's last layer ({last_name}):\nwhat each {unit} paints": rgb_tiles(last, args.image_size)}
    grids = {}
    for title, tiles in panels.items():
        tiles = tiles[:n_units if unit == "hidden unit" else 32]
        shown, peaks = own_scale(tiles)
        grids[title] = (tiles, peaks, make_grid(shown.clamp(0, 1), nrow=4 if len(tiles) <= 16 else 8,
                                                padding=2, pad_value=1.0))
    rows, columns = next(iter(grids.values()))[2].shape[1:]  # each panel ~5.2 in wide, 3.1 in of text
    fig, axes = plt.subplots(1, 3, figsize=(16.8, 5.2 * rows / columns + 3.1))
    for ax, (title, (tiles, (low, high), grid)), caption in zip(axes, grids.items(), WEIGHT_CAPTIONS[args.arch]):
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set(xticks=[], yticks=[], title=f"{title}\n{len(tiles)} tiles {tuple(tiles.shape[1:])}; "
                                           f"max |w| {low:.2g}-{high:.2g}")
        ax.set_xlabel(f"{caption}\nNeighbouring weights correlate {neighbour_correlation(tiles):.2f} "
                      f"(random noise: 0, smooth: near 1).")
    fig.suptitle(f"{name}: the weights that see and draw the image (each tile on its own scale, grey = 0)")
    common.save_figure(fig, Path(args.out_dir) / f"{name}_weights.png")


def loss_figure(history, final, name, args):
    """BCE above each split's floor (what a decoder can still gain), per-pixel MSE and KL against
    the iteration count, train and test, on log axes (epoch 1 is far above the rest); with
    --class-loss-weight also the class loss and the helper's own cross-entropy."""
    iterations = [r["iteration"] for r in history]

    def series(key, floor=False):
        return {p: (iterations, [r[f"{p}_{key}"] - (final[f"{p}_bce_floor"] if floor else 0) for r in history])
                for p in ("train", "test")}

    panels = {f"BCE − its floor, nats per image (floor: test {final['test_bce_floor']:.0f})":
                  series("bce", floor=True),
              "MSE per pixel value": series("mse"),
              "KL(q(z|x) || N(0, I)), nats": series("kl")}
    if "train_fool" in history[-1]:  # --gan-weight, --dis-l-weight: the VAE-GAN's terms
        panels["VAE-GAN terms, nats per image (training batches)"] = {
            "GAN term −log D(x̃) − log D(x_p) (× --gan-weight)": (iterations, [r["train_fool"] for r in history]),
            "L_llike^Dis_l / 1000 (× --dis-l-weight)": (iterations, [r["train_llike"] / 1000 for r in history]),
            "D's own loss −L_GAN": (iterations, [r["train_dis"] for r in history])}
    if "train_class" in history[-1]:  # --class-loss-weight: the term the conditional result rests on
        panels["cross-entropy, nats per image (training batches)"] = {
            "class loss: the helper on generated galaxies (× --class-loss-weight in the objective)":
                (iterations, [r["train_class"] for r in history]),
            "the helper on the real batch (its own training)": (iterations, [r["train_helper"] for r in history])}
    common.plot_panels(Path(args.out_dir) / f"{name}_loss.png", panels,
                       xlabel="training iteration", markers=False, log_y=True,
                       legend_below=len(panels) > 3,
                       title=f"{name}: reconstruction error and KL (train: mean over each epoch's "
                             f"batches while training; test: after the epoch)")


@torch.no_grad()
def comparison_figure(paths, test, classes, judge, args, device):
    """--compare: for each class, N_SHOWN real test galaxies of it, then each model's generated
    galaxies of that class, every image at the same size: a conditional model's prior draws
    decoded given the class; an unconditional model's prior draws (a pool of 400) that the judge
    reads as the class, the first N_SHOWN of them (it cannot be asked for a class)."""
    models, files = {}, []  # {row label: model}, and which file each is (the title)
    for path in paths:
        checkpoint = common.load_checkpoint(path, KIND, "--compare")
        trained = checkpoint["args"]
        if trained["image_size"] != args.image_size:
            common.fail(f"--compare: {path} draws {trained['image_size']}-pixel galaxies, not {args.image_size}")
        with torch.random.fork_rng(devices=[]):  # the random start is overwritten
            model = build_vae(trained, checkpoint.get("channels", CHANNELS), classes, device)
        common.load_weights(path, KIND, {"model": model}, "--compare", checkpoint)
        models[f"model {len(models) + 1} ({'conditional' if model.cond_dim else 'unconditional'})"] = model
        files.append(f"model {len(models)}: {Path(path).name}")
    rows, generator = {}, torch.Generator().manual_seed(args.seed + 1)
    pools = {name: prior_samples(model, classes, [400], args.seed + 5)[0]
             for name, model in models.items() if not model.cond_dim}
    for k, cls in enumerate(classes["names"]):
        rows[f"real test galaxies:\n{cls}"] = as_float(test["x"][(test["y"] == k).nonzero().flatten()[:N_SHOWN]]).cpu()
        for name, model in models.items():
            if model.cond_dim:
                z = torch.randn(N_SHOWN, model.to_mu.out_features, generator=generator).to(device)
                rows[f"{name}:\ngenerated given {cls}"] = decode(model, z, class_condition(classes, k, N_SHOWN, device))
            else:
                read_as = classify(judge, pools[name].to(device)).cpu()
                chosen = pools[name][read_as == k][:N_SHOWN]
                rows[f"{name}:\nprior samples the judge\nreads as {cls} ({int((read_as == k).sum())}/400)"] = chosen
    common.plot_image_rows(Path(args.out_dir) / f"{KIND}_comparison.png", rows,
                           title="Real galaxies and generated ones, class by class, at the same size\n"
                                 + "\n".join(files))


def architectures_figure(out, settings):
    """Train and test BCE above the floor of the three unconditional architectures on one axis:
    for each, the longest run in `out` whose knobs but architecture and epochs are this run's
    (`settings`); drawn once all three are there, as <comparison_name>_architectures.png."""
    name, runs = comparison_name(settings), {}
    for path in sorted(out.glob(f"{KIND}_*_metrics.json")):
        metrics = json.loads(path.read_text())
        trained = metrics.get("trained_with") or metrics["args"]
        if trained["arch"] in ARCHS and not trained["conditional"] and comparison_name(trained) == name:
            runs[trained["arch"]] = max(runs.get(trained["arch"], metrics), metrics,
                                        key=lambda m: m["final"]["epochs_trained"])
    if len(runs) == len(ARCHS):
        colours = dict(zip(ARCHS, ("tab:blue", "tab:orange", "tab:green")))
        common.plot_curves(out / f"{name}_architectures.png",
                           {f"{arch}, {p}": ([r["iteration"] for r in runs[arch]["history"]],
                                             [r[f"{p}_bce"] - runs[arch]["final"][f"{p}_bce_floor"]
                                              for r in runs[arch]["history"]])
                            for arch in ARCHS for p in ("train", "test")},
                           "training iteration", "BCE − its floor, nats per image",
                           "Galaxy VAEs: the three architectures "
                           "(one colour each; solid: train, dashed: test)", markers=False, log_y=True,
                           styles={f"{arch}, {p}": {"color": colours[arch], "linestyle": line}
                                   for arch in ARCHS for p, line in (("train", "-"), ("test", "--"))})


# Short tags of this script's knobs in a run's name; data paths, the cache and the workers stay
# out (they do not change what a run computes), and so do --arch and --conditional (in the base).
TAGS = {"latent_dim": "z", "kl_weight": "kl", "image_size": "size", "test_fraction": "test",
        "class_scheme": "", "sample_class": "class", "condition": "", "class_loss_weight": "classloss",
        "helper_pool": "pool", "gan_weight": "gan", "dis_l_weight": "disl", "likelihood": ""}
NOT_IN_NAME = ("images_dir", "labels", "cache_dir", "workers", "arch", "conditional", "experiment",
               "classifier_weights", "replot", "compare", "init")
VAE_ONLY = ("latent_dim", "kl_weight", "condition", "sample_class", "class_loss_weight", "helper_pool",
            "gan_weight", "dis_l_weight", "likelihood")  # knobs the judge never reads


def run_name(args):
    """What this run's files are called: with --load, the loaded file's own name; otherwise
    galaxy_vae_<arch>[_cond] (or galaxy_classifier) plus every knob that differs from the
    defaults (common.run_name): galaxy_vae_conv_amp, galaxy_vae_conv_cond_film_amp; a quick edit
    writes beside it (galaxy_vae_conv_e1_limit200_z32)."""
    if args.load:
        return Path(args.load).stem
    defaults = vars(parse_args(["--experiment", args.experiment]))
    if args.experiment == "classifier":
        return common.run_name(CLASSIFIER, args, defaults, TAGS, skip=(*NOT_IN_NAME, *VAE_ONLY))
    base = f"{KIND}_{args.arch}{'_cond' if args.conditional else ''}"
    started = f"_from-{Path(args.init).stem}" if args.init else ""  # a fine-tuned run: where it started
    return common.run_name(base, args, defaults, TAGS, skip=NOT_IN_NAME) + started


def comparison_name(settings):
    """The name of the architectures figure a run belongs to: its knobs but the architecture and
    the epochs ({flag: value} of the run, as its metrics record them), e.g. galaxy_vae_amp."""
    return common.run_name(KIND, argparse.Namespace(**settings), vars(parse_args([])), TAGS,
                           skip=(*NOT_IN_NAME, "epochs", "sample_class"))


def build_vae(settings, channels, classes, device):
    """The GalaxyVAE of a run's settings (its args, as a dict: arch, latent_dim, image_size,
    conditional, condition) and conv/resnet widths; conditioned on the classes' conditions."""
    cond_dim = classes["conditions"].shape[1] if settings["conditional"] else 0
    return GalaxyVAE(settings["arch"], settings["latent_dim"], settings["image_size"], cond_dim, channels,
                     settings.get("condition", "concat")).to(device)  # files from before --condition: concat


def load_judge(args, classes, device):
    """The judge a conditional model's samples are scored by (--classifier-weights, default
    galaxy_classifier.pt in --out-dir): None, said in one line, when the default is absent."""
    path = Path(args.classifier_weights or Path(args.out_dir) / f"{CLASSIFIER}.pt")
    if not args.classifier_weights and not path.exists():
        print(f"no judge at {path}: the generated galaxies are not scored (run `python galaxy_vae.py "
              f"--experiment classifier --labels {args.labels} --out-dir {path.parent}` first to score them)")
        return None
    common.require_file(path, "--classifier-weights", f"python galaxy_vae.py --experiment classifier "
                        f"--labels {args.labels} --out-dir {path.parent}")
    checkpoint = common.load_checkpoint(path, CLASSIFIER, flag="--classifier-weights")
    if checkpoint["classes"]["names"] != classes["names"]:
        common.fail(f"--classifier-weights: {path} tells apart {checkpoint['classes']['names']}, "
                    f"not {classes['names']}")
    with torch.random.fork_rng(devices=[]):  # its random start is overwritten: the VAE's stays as without it
        judge = GalaxyClassifier(len(classes["names"])).to(device)
    common.load_weights(path, CLASSIFIER, {"model": judge}, "--classifier-weights", checkpoint)
    return judge


def judge_metrics(model, judge, train, test, classes, args):
    """What the judge says of a VAE's galaxies, each beside its yardstick: the Fréchet distances
    (galaxy_frechet: generated, reconstructed, the real floor); the judge on real test galaxies
    and on the model's reconstructions of them; for a conditional model, the class score of its
    generated galaxies (generated_class_score) and its ratio to the real images' score."""
    weights = class_weights(train["y"], len(classes["names"]))  # as in the judge's own metrics
    reconstructed = reconstructions(model, test)
    result = {**galaxy_frechet(model, judge, train, test, reconstructed, classes, args.seed + 3),
              **{f"judge_real_{k}": v for k, v in judge_real(judge, test, classes, weights).items()},
              "judge_reconstructed_test_balanced_accuracy": reconstructed_class_score(judge, reconstructed, test, classes)}
    print(f"Fréchet distance in the judge's features ({result['frechet_n']} galaxies): generated "
          f"{result['frechet_generated']:.2f}, reconstructed {result['frechet_reconstructed']:.2f}, "
          f"real training galaxies {result['frechet_floor']:.2f}")
    if model.cond_dim:
        result.update(generated_class_score(model, judge, classes, args.seed + 2))
        result["generated_to_real_ratio"] = (result["generated_balanced_accuracy"]
                                             / result["judge_real_test_balanced_accuracy"])
        print(f"generated {result['generated_balanced_accuracy']:.3f} vs real "
              f"{result['judge_real_test_balanced_accuracy']:.3f} balanced accuracy of the judge")
    return result


def run_classifier(args, train, test, classes, out, name, generator, checkpoint):
    """--experiment classifier: train (or --load) the judge; its curves and metrics."""
    model = GalaxyClassifier(len(classes["names"])).to(train["x"].device)
    if args.load:
        run = common.load_run(args.load, CLASSIFIER, {"model": model}, checkpoint=checkpoint)
    else:
        run = fit_classifier(model, train, test, args, out / name, generator, classes)
    final = {"epochs_trained": run.history[-1]["epoch"], "parameters": n_parameters(model),
             **judge_real(model, test, classes, class_weights(train["y"], len(classes["names"])))}
    common.plot_panels(out / f"{name}_curves.png",
                       {"cross-entropy (class-weighted)": common.epoch_series(run.history, "ce"),
                        "balanced accuracy": common.epoch_series(run.history, "balanced_accuracy", ("test",))},
                       xlabel="epoch", title=f"{name}: the judge, a CNN classifying real galaxies")
    common.save_metrics(out / f"{name}_metrics.json", args, train["x"].device, run.seconds, run.history,
                        final, **run.provenance())
    print(f"{name}: test balanced accuracy {final['test_balanced_accuracy']:.3f} | "
          f"accuracy {final['test_acc']:.3f}")


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    generator = common.seed_everything(args.seed)
    out, name = common.out_dir(args), run_name(args)
    if args.replot:  # a run whose weights are not kept: its curves from its metrics file
        metrics, name = common.read_metrics(args.replot, "train_bce", "a galaxy VAE run")
        return loss_figure(metrics["history"], metrics["final"], name, args)
    kind = CLASSIFIER if args.experiment == "classifier" else KIND
    checkpoint = common.load_checkpoint(args.load, kind, "--load") if args.load else None
    if args.load:  # the architecture and preprocessing are the trained run's
        common.use_run_args(args, checkpoint, ("arch", "latent_dim", "conditional", "condition", "crop",
                                               "image_size", "class_scheme", "kl_weight", "likelihood"), args.load)
        if args.conditional and not args.labels:
            common.fail(f"{args.load} is a conditional model: give --labels to condition it")
    if args.experiment == "classifier" and not args.labels:
        common.fail("--experiment classifier needs --labels: it learns each galaxy's class")
    # the conv/resnet widths: the loaded file's (files from before they were stored: the five below)
    channels = checkpoint.get("channels", (32, 64, 128, 256, 512)) if args.load else CHANNELS
    if args.arch != "mlp" and (problem := size_problem(args.image_size, channels)):
        common.fail(problem)
    data, classes = common.load_galaxies(args.images_dir, args.labels, args.class_scheme, args.crop,
                                         args.image_size, args.cache_dir, args.workers)
    if classes:  # checked before training, not after it; the default is the rarest class
        args.sample_class = args.sample_class or classes["names"][classes["counts"].index(min(classes["counts"]))]
        if args.sample_class not in classes["names"]:
            common.fail(f"--sample-class {args.sample_class!r} is not one of {classes['names']}")
    train, test = common.split_galaxies(data, args.test_fraction, args.seed, args.limit, device)
    if args.experiment == "classifier":
        return run_classifier(args, train, test, classes, out, name, generator, checkpoint)
    judge = load_judge(args, classes, device) if classes else None
    if args.compare:
        if judge is None:
            common.fail("--compare needs the judge: give --classifier-weights")
        return comparison_figure(args.compare, test, classes, judge, args, device)
    model = build_vae(vars(args), channels, classes, device)
    if args.load:
        trained = checkpoint.get("classes")  # a conditional model needs the classes it learned
        if args.conditional and trained["layout"] != classes["layout"]:
            common.fail(f"{args.load} was conditioned on {trained['layout']} labels; --labels gives "
                        f"{classes['layout']} labels")
        if args.conditional and trained["layout"] == "labels" and trained["names"] != classes["names"]:
            common.fail(f"{args.load} was conditioned on the classes {trained['names']}; "
                        f"--labels gives {classes['names']}")
        run = common.load_run(args.load, KIND, {"model": model}, checkpoint=checkpoint)
    print(f"{len(train['x'])} training and {len(test['x'])} test images, {tuple(train['x'].shape[1:])}; "
          f"{n_parameters(model):,} parameters")
    start = None  # --init: a trained VAE as the start; optimizers and the rest are new
    if args.init and not args.resume:
        start = common.load_checkpoint(args.init, KIND, "--init")
        if differ := [f"--{k.replace('_', '-')} {start['args'][k]}" for k in ("arch", "latent_dim", "conditional", "condition", "image_size")
                      if start["args"].get(k, getattr(args, k)) != getattr(args, k)]:
            common.fail(f"--init: {args.init} was trained with {', '.join(differ)}: give the same to start from it")
        common.load_weights(args.init, KIND, {"model": model}, "--init", start)
        print(f"--init: the VAE starts from {args.init}")
    if not args.load:
        run = fit(model, train, test, args, out / name, generator, classes, start)
    final = final_metrics(model, train, test, classes, args, run)
    if judge:
        final.update(judge_metrics(model, judge, train, test, classes, args))
    loss_figure(run.history, final, name, args)
    weight_figure(model, args, name)
    figure_generator = torch.Generator().manual_seed(args.seed + 1)
    sample_figure(model, classes if model.cond_dim else None, args, name, device, figure_generator)
    if classes:
        class_figures(model, test, classes, args, name, figure_generator)
        latent_figure(model, test, classes, args, name)
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history, final,
                        **run.provenance(),
                        judge=str(args.classifier_weights or out / f"{CLASSIFIER}.pt") if judge else None,
                        data={"images": len(data["ids"]), "train": len(train["x"]), "test": len(test["x"]),
                              "classes": dict(zip(classes["names"], classes["counts"])) if classes else None})
    architectures_figure(out, run.trained_with)  # once the metrics of all three architectures are there


if __name__ == "__main__":
    common.run_main(main)
