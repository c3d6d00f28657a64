"""Variational autoencoders on Fashion-MNIST: assignment A task 2 (conv) and assignment C task 2 (MLP).

--arch conv   cnn.py's encoder (Conv 32/64/128, 3x3, stride 2) → μ and log σ² of length 256, and
              a decoder that mirrors it with ConvTranspose2d. Figures: the loss terms, the 2-norms
              of the encodings, test images above their reconstructions, fixed noise decoded.
--arch mlp    the report's VAE, 784 → 500 (LeakyReLU) → z = 2 and back; for z = 2 also the test
              set's means μ coloured by class.
--sweep-kl / --sweep-latent   one MLP VAE per KL weight / latent size, all from the same seed; the
              final models decode the same noise side by side.
--experiment classifier / init-from-classifier   the encoder's architecture (784 → 500 → 10) as a
              classifier; then the MLP VAE with its encoder copied from that classifier, against
              the same VAE from a random start.
Design: one objective, vae_loss = recon + β·KL (each per example, averaged over the batch), for
training and evaluation alike; --recon sets the reconstruction term's form and reduction, which
decides where a KL weight collapses the code (docs/vae.md). Test losses sample z from a fixed-seed
generator, so --load repeats them; every VAE's metrics hold the sample quality of as many
z ~ N(0, I) draws as the test set has (cnn.sample_quality).

Page: docs/vae.md (what it does, results, answers, every flag)
Run: python vae.py --arch mlp --data-dir ../shared/data        (docs/vae.md has every command)
"""
import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import cnn
import common

SNAPSHOT_EPOCHS = (1, 5, 10, 50, 100)  # when the fixed noise is decoded (those <= --epochs)
N_FIXED_NOISE = 12
CLASSIFIER = "vae_classifier"  # the classifier experiment's run name and checkpoint kind
INIT_STARTS = ("classifier", "random")  # the two VAEs of init-from-classifier, in training order
# default --epochs: the report's MLP VAE ran 100, and compared the two init starts at epoch 50
EPOCHS = {"conv": 30, "mlp": 100, "classifier": 30, "init-from-classifier": 50}
TAGS = {"kl_weight": "kl", "latent_dim": "z", "recon": ""}  # run names: vae_mlp_e50_mse-mean_kl0.5
NOT_NAMED = ("arch", "experiment", "sweep_kl", "sweep_latent", "classifier_weights", "cnn_weights", "replot")
# y labels with units, as reconstruction_loss and kl_divergence reduce: BCE and KL in nats per
# image (summed over the pixels / over z), squared errors of [0, 1] intensities per image or pixel
RECON_LABELS = {"bce": "reconstruction, nats per image\n(BCE summed over pixels)",
                "mse": "reconstruction per image\n(squared error, summed)",
                "mse-mean": "reconstruction per pixel\n(squared error, averaged)"}
KL_LABEL = "KL(q(z|x) || N(0, I)), nats per image"
COLLAPSED_KL = 0.01  # nats: a final test KL below this means z carries nothing about the image
LOAD_HELP = ("skip training: load weights files (<run>.pt or <run>.ckpt) and redo the figures and "
             "metrics; one per model the command trains, in its order: one per member for a sweep "
             "(--sweep-kl 1,0.5: vae_mlp.pt vae_mlp_kl0.5.pt), two for init-from-classifier")


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=None, batch_size=128, lr=1e-3, load_help=LOAD_HELP)
    parser.add_argument("--arch", choices=["conv", "mlp"],
                        help="conv: assignment A's VAE; mlp: assignment C's 784-500-z VAE "
                             "(default: conv, and mlp for the two classifier experiments)")
    parser.add_argument("--experiment", choices=["vae", "classifier", "init-from-classifier"],
                        default="vae", help="what to train (the last two use the MLP encoder); "
                        "default --epochs: conv 30, mlp 100, classifier 30, init-from-classifier "
                        "50")
    parser.add_argument("--recon", choices=["bce", "mse", "mse-mean"], default="bce",
                        help="reconstruction loss: bce or mse summed over the pixels, or mse-mean, "
                             "averaged over them as nn.MSELoss() does (the report's setup)")
    parser.add_argument("--kl-weight", type=common.nonnegative_float, default=1.0,
                        help="β, the weight of the KL term (1 = the plain ELBO)")
    parser.add_argument("--latent-dim", type=common.positive_int,
                        help="length of z (default: 256 for conv, 2 for mlp)")
    sweep = parser.add_mutually_exclusive_group()
    sweep.add_argument("--sweep-kl", type=common.number_list(common.nonnegative_float),
                       metavar="W1,W2,...", help="train one model per KL weight and compare them")
    sweep.add_argument("--sweep-latent", type=common.number_list(common.positive_int),
                       metavar="D1,D2,...", help="train one model per latent size and compare them")
    parser.add_argument("--classifier-weights", metavar="FILE",
                        help="init-from-classifier: the weights of --experiment classifier "
                             f"(default: {CLASSIFIER}.pt in --out-dir)")
    parser.add_argument("--replot", nargs=2, metavar=("CLASSIFIER_START", "RANDOM_START"),
                        help="init-from-classifier: no data, no model: redraw the comparison's loss "
                             "figure from its two runs' <run>_metrics.json (weights not kept)")
    cnn.add_sample_quality_args(parser)
    args = parser.parse_args(argv)
    if args.experiment != "vae" and (args.arch == "conv" or args.sweep_kl or args.sweep_latent):
        parser.error(f"--experiment {args.experiment} uses the MLP encoder: no --arch conv, no sweep")
    if args.replot and (args.experiment != "init-from-classifier" or args.load or args.resume):
        parser.error("--replot redraws the init-from-classifier comparison from its metrics files: "
                     "no other --experiment, no --load or --resume")
    models = len(args.sweep_kl or args.sweep_latent or []) or (
        len(INIT_STARTS) if args.experiment == "init-from-classifier" else 1)
    common.check_common_args(parser, args, load_files=models,
                             sweep=bool(args.sweep_kl or args.sweep_latent))
    args.arch = args.arch or ("conv" if args.experiment == "vae" else "mlp")
    if args.latent_dim is None:
        args.latent_dim = 256 if args.arch == "conv" else 2
    args.epochs = args.epochs or EPOCHS[args.arch if args.experiment == "vae" else args.experiment]
    return args


# ----------------------------------------------------------------------------------------------
# MODELS
# ----------------------------------------------------------------------------------------------
def reparameterize(mu, logvar, generator):
    """z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2014, Sec. 2.4): sampling as a differentiable
    function of μ and σ; ε comes from the CPU `generator`, so a run repeats on any device."""
    eps = common.to_device(torch.randn(mu.shape, generator=generator), mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    """What every VAE here does; subclasses define encoder, to_mu, to_logvar and decoder."""

    def encode(self, x):  # (B, 1, 28, 28) -> μ, log σ²: (B, z) each
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z):  # (B, z) -> (B, 1, 28, 28) logits; the images are sigmoid(logits)
        return self.decoder(z)

    def forward(self, x, generator):
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar, generator)), mu, logvar


class ConvVAE(VAE):
    """Assignment A's VAE. Each decoder layer inverts the shapes of its encoder counterpart."""

    def __init__(self, latent_dim=256):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),    # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),   # (B, 64, 7, 7)
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),  # (B, 128, 4, 4)
            nn.Flatten(),                                           # (B, 2048)
        )
        self.to_mu = nn.Linear(2048, latent_dim)                    # (B, z)
        self.to_logvar = nn.Linear(2048, latent_dim)                # (B, z)
        # output_padding picks 7 → 14 → 28 where a stride-2 transpose could also give 13 or 27
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 2048), nn.ReLU(),                 # (B, 2048)
            nn.Unflatten(1, (128, 4, 4)),                           # (B, 128, 4, 4)
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1), nn.ReLU(),                    # (B, 64, 7, 7)
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),   # (B, 32, 14, 14)
            nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1),               # (B, 1, 28, 28) logits
        )


class MLPVAE(VAE):
    """Assignment C's VAE: 784 → 500 (LeakyReLU) → z (μ and log σ²) → 500 (LeakyReLU) → 784."""

    def __init__(self, latent_dim=2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.LeakyReLU(0.01))  # (B, 500)
        self.to_mu = nn.Linear(500, latent_dim)
        self.to_logvar = nn.Linear(500, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 500), nn.LeakyReLU(0.01),         # (B, 500)
            nn.Linear(500, 784), nn.Unflatten(1, (1, 28, 28)),      # (B, 1, 28, 28) logits
        )


class MLPClassifier(nn.Module):
    """The MLP VAE's encoder architecture with a 10-way head: 784 → 500 (LeakyReLU) → 10.
    `encoder` has the VAE encoder's exact layout, so its weights load into MLPVAE.encoder."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.LeakyReLU(0.01))
        self.head = nn.Linear(500, 10)

    def forward(self, x):  # (B, 1, 28, 28) -> (B, 10) logits
        return self.head(self.encoder(x))


def build_vae(args):
    return (ConvVAE if args.arch == "conv" else MLPVAE)(args.latent_dim)


# ----------------------------------------------------------------------------------------------
# LOSSES
# ----------------------------------------------------------------------------------------------
def reconstruction_loss(logits, x, kind):
    """How far the decoded image is from x, averaged over the batch.

    bce:      -Σ_pixels [x log σ(l) + (1 - x) log(1 - σ(l))]  (Bernoulli decoder, Kingma & Welling
              2014, Appendix C.1; from logits for numerical stability)
    mse:      Σ_pixels (σ(l) - x)²  (a Gaussian decoder with fixed variance, up to constants)
    mse-mean: (1/784) Σ_pixels (σ(l) - x)², nn.MSELoss()'s default reduction: 1/784 of mse, so
              next to a KL summed over z it acts as mse with the KL weighted 784 times more
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        per_pixel = (torch.sigmoid(logits) - x) ** 2
    per_image = per_pixel.flatten(1)
    return (per_image.mean(1) if kind == "mse-mean" else per_image.sum(1)).mean()


def kl_divergence(mu, logvar):
    """KL(q(z|x) || N(0, I)) = -½ Σ_j (1 + log σ_j² - μ_j² - σ_j²)  (Kingma & Welling 2014,
    Appendix B). Summed over the latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def vae_loss(recon, kl, kl_weight):
    """The objective of every VAE here, the one place it is written:

        loss = recon + kl_weight · KL

    the negative ELBO (Kingma & Welling 2014, Eq. 3) at kl_weight = 1, a β-VAE (Higgins et al.
    2017) otherwise. `recon` (reconstruction_loss) and `kl` (kl_divergence, summed over z) are
    per-example means: over a batch in training (tensors), over a whole split in evaluation
    (numbers), and so is the loss. Returns {recon, kl, loss}."""
    return {"recon": recon, "kl": kl, "loss": recon + kl_weight * kl}


def classification_loss(logits, labels):
    """Cross-entropy of the softmax, -(1/B) Σ_b log softmax(logits_b)[y_b]; averaged over the batch."""
    return F.cross_entropy(logits, labels)


# ----------------------------------------------------------------------------------------------
# TRAINING AND EVALUATION: the VAEs
# ----------------------------------------------------------------------------------------------
def train_vae_epoch(model, optimizer, x, args, epoch, generator):
    """One pass minimising vae_loss; returns its recon and kl terms per batch (device tensors)."""
    model.train()
    n_batches = common.num_batches(len(x), args.batch_size)
    recon, kl = torch.empty(n_batches, device=x.device), torch.empty(n_batches, device=x.device)
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, n_batches, f"epoch {epoch}")):
        with common.autocast(args, x.device):
            logits, mu, logvar = model(x[idx], generator)
            terms = vae_loss(reconstruction_loss(logits, x[idx], args.recon),
                             kl_divergence(mu, logvar), args.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        recon[i], kl[i] = terms["recon"].detach(), terms["kl"].detach()
    return {"recon": recon, "kl": kl}


@torch.no_grad()
def evaluate_vae(model, x, args, batch_size=1000):
    """vae_loss over a whole split, in eval mode: {recon, kl, loss} per example. z is sampled
    with a fixed-seed generator, so --load reproduces these numbers exactly."""
    model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    sums = torch.zeros(2, device=x.device)  # recon, kl: summed over the examples
    for idx in common.batch_indices(len(x), batch_size, x.device):
        logits, mu, logvar = model(x[idx], generator)
        sums += torch.stack([reconstruction_loss(logits, x[idx], args.recon),
                             kl_divergence(mu, logvar)]) * len(idx)
    recon, kl = sums.tolist()
    return vae_loss(recon / len(x), kl / len(x), args.kl_weight)


@torch.no_grad()
def latent_statistics(model, x, seed):
    """The encodings of a whole split (task A 2: "the 2-norms of the encoding vectors"): the means
    μ, one z ~ q(z|x) per image and as many z ~ N(0, I), each from a fixed-seed generator; their
    mean norms and the active units (Burda et al. 2016, Sec. 5.2: latent dimensions whose mean
    moves with the input, Var_x[μ_j] > 0.01). Returns ({mu, z, prior}: (N, z) each, statistics)."""
    model.eval()
    # μ and log σ² per chunk of 1000 images; zip(*...) pairs up the chunks' μs and log σ²s to join
    mu, logvar = map(torch.cat, zip(*(model.encode(x[idx])
                                      for idx in common.batch_indices(len(x), 1000, x.device))))
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(seed))
    prior = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed + 2))
    return {"mu": mu, "z": z, "prior": prior}, {
        "mu_norm_mean": mu.norm(dim=1).mean().item(), "z_norm_mean": z.norm(dim=1).mean().item(),
        "active_units": int((mu.var(0) > 0.01).sum().item())}


def prior_samples(model, n, args, device):
    """n images decoded from z ~ N(0, I) (their own seeded stream), for the sample-quality metric."""
    z = torch.randn(n, args.latent_dim, generator=torch.Generator().manual_seed(args.seed + 3))
    return torch.cat([decode_images(model, chunk.to(device)) for chunk in z.split(1000)])


def fit_vae(model, data, args, stem, kind, generator, fixed_noise):
    """Train for args.epochs, or until the test loss has not improved for --patience epochs.
    `fixed_noise` decoded after each epoch of SNAPSHOT_EPOCHS is saved with the weights, for
    --load to redraw. Returns the Run."""
    (train_x, _), (test_x, _) = data
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    run = common.Run(args, stem, kind, {"model": model}, {"optimizer": optimizer}, generator)
    snapshots = run.extra.get("snapshots", {})
    for epoch in range(run.done + 1, args.epochs + 1):
        losses = train_vae_epoch(model, optimizer, train_x, args, epoch, generator)
        common.check_finite(epoch, run.weights_path, **losses)
        record = {f"train_{k}": v.mean().item() for k, v in losses.items()}
        record.update({f"test_{k}": v for k, v in evaluate_vae(model, test_x, args).items()})
        if epoch in SNAPSHOT_EPOCHS:
            snapshots[epoch] = decode_images(model, fixed_noise)
        run.log(epoch, record)
        run.save(epoch, snapshots=snapshots)
        if common.stop_early(run.history, "test_loss", args.patience):
            break
    return run


# ----------------------------------------------------------------------------------------------
# TRAINING AND EVALUATION: the classifier (assignment C, task 2-4)
# ----------------------------------------------------------------------------------------------
def train_classifier_epoch(model, optimizer, x, y, args, epoch, generator):
    """One pass minimising the cross-entropy; returns it per batch (a device tensor)."""
    model.train()
    n_batches = common.num_batches(len(x), args.batch_size)
    losses = torch.empty(n_batches, device=x.device)
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, n_batches, f"epoch {epoch}")):
        with common.autocast(args, x.device):
            loss = classification_loss(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[i] = loss.detach()
    return losses


@torch.no_grad()
def evaluate_classifier(model, x, y, batch_size=1000):
    """Mean cross-entropy and accuracy over a whole split, in eval mode."""
    model.eval()
    sums = torch.zeros(2, device=x.device)  # cross-entropy, correct predictions: summed
    for idx in common.batch_indices(len(x), batch_size, x.device):
        logits = model(x[idx])
        sums += torch.stack([classification_loss(logits, y[idx]) * len(idx),
                             (logits.argmax(1) == y[idx]).sum().float()])
    ce, correct = sums.tolist()
    return {"ce": ce / len(x), "acc": correct / len(x)}


def fit_classifier(model, data, args, stem, generator):
    """Minimise the cross-entropy for args.epochs, or until the test cross-entropy has not
    improved for --patience epochs, measuring both splits after every epoch. Returns the Run."""
    (train_x, train_y), (test_x, test_y) = data
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    run = common.Run(args, stem, CLASSIFIER, {"model": model}, {"optimizer": optimizer}, generator)
    for epoch in range(run.done + 1, args.epochs + 1):
        losses = train_classifier_epoch(model, optimizer, train_x, train_y, args, epoch, generator)
        common.check_finite(epoch, run.weights_path, ce=losses)
        test = evaluate_classifier(model, test_x, test_y)
        record = {"train_ce": losses.mean().item(), "test_ce": test["ce"], "test_acc": test["acc"],
                  "train_acc": evaluate_classifier(model, train_x, train_y)["acc"]}
        run.log(epoch, record)
        run.save(epoch)
        if common.stop_early(run.history, "test_ce", args.patience):
            break
    return run


def run_name(args, base=None, skip=()):
    """What a run's files are called: with --load of one file, that file's own name; otherwise
    `base` (vae_conv, vae_mlp, vae_classifier, vae_mlp_init, vae_mlp_sweep_kl, ...) plus every knob
    that differs from its experiment's defaults (vae_mlp_kl0.5, vae_conv_e300_patience5): a quick
    edit writes beside the committed run. The checkpoint kind stays the model's (vae_mlp)."""
    if args.load and not isinstance(args.load, list):
        return Path(args.load).stem
    variant = ["--arch", args.arch] if args.experiment == "vae" else []
    defaults = vars(parse_args(["--experiment", args.experiment, *variant]))
    if args.experiment == "classifier":  # it has no decoder, no KL and no z
        skip = (*skip, "recon", "kl_weight", "latent_dim")
    base = base or {"vae": f"vae_{args.arch}", "classifier": CLASSIFIER,
                    "init-from-classifier": "vae_mlp_init"}[args.experiment]
    return common.run_name(base, args, defaults, TAGS, (*NOT_NAMED, *skip))


# ----------------------------------------------------------------------------------------------
# FIGURES
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def decode_images(model, z):
    model.eval()
    return torch.sigmoid(model.decode(z)).cpu()  # (N, 1, 28, 28) in [0, 1]


def fixed_noise_for(args, device):
    """The 12 noise vectors decoded at every snapshot, from their own seeded stream."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    return torch.randn(N_FIXED_NOISE, args.latent_dim, generator=generator).to(device)


def plot_histograms(path, samples, xlabel, title, bins=50):
    """samples: {label: 1-D tensor}, overlaid on one axis with shared bins."""
    fig, ax = plt.subplots(figsize=(6, 4))
    values = {label: s.detach().float().cpu().numpy() for label, s in samples.items()}
    low = min(v.min() for v in values.values())
    high = max(v.max() for v in values.values())
    for label, v in values.items():
        ax.hist(v, bins=bins, range=(low, high), alpha=0.6, label=label)
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    if len(samples) > 1:
        ax.legend()
    common.save_figure(fig, path)


@torch.no_grad()
def vae_figures(model, test, args, name, run, fixed_noise, latents):
    out = Path(args.out_dir)
    x, y = test
    kl_curves = common.epoch_series(run.history, "kl")
    common.plot_panels(out / f"{name}_loss.png",
                       {RECON_LABELS[args.recon]: common.epoch_series(run.history, "recon"),
                        KL_LABEL: kl_curves},
                       xlabel="epoch", title=f"{name}: loss terms per example (β = {args.kl_weight:g})",
                       ylims={KL_LABEL: kl_range(kl_curves)})
    model.eval()
    originals = x[:4]
    mu, _ = model.encode(originals)
    common.plot_image_rows(out / f"{name}_reconstructions.png",
                           {"test image": originals, "decoded\nfrom z = μ": decode_images(model, mu)},
                           title=f"{name}: reconstructions")
    plot_histograms(out / f"{name}_norms.png",
                    {"‖μ‖, encoder means": latents["mu"].norm(dim=1),
                     "‖z‖, z ~ q(z|x)": latents["z"].norm(dim=1),
                     "‖z‖, z ~ N(0, I) prior": latents["prior"].norm(dim=1)},
                    xlabel="2-norm", title=f"{name}: norms over the {len(x)} test images")
    rows = {f"epoch {e}": images for e, images in sorted(run.extra.get("snapshots", {}).items())}
    last = run.history[-1]["epoch"]
    rows.setdefault(f"epoch {last}", decode_images(model, fixed_noise))  # the final model too
    common.plot_image_rows(out / f"{name}_samples.png", rows,
                           title=f"{name}: the same {N_FIXED_NOISE} z ~ N(0, I) decoded during training")
    if args.latent_dim == 2:
        common.plot_scatter(out / f"{name}_latent.png", {"": latents["mu"]}, y,
                            common.class_names("fashion-mnist"),
                            title=f"{name}: encoder means μ of the test set")


def kl_range(curves):
    """The KL axis's stated range for curves {label: (xs, ys)}: from just below 0 (a collapsed KL
    of 0 stays visible above the frame) to 5% above the highest value, and at least 1 nat (a
    collapsed run's 1e-6 reads as the 0 it is). Autoscaled to the curves' narrow range instead,
    noise of a tenth of a nat would look like swings."""
    top = max(1.0, *(max(ys) for _, ys in curves.values()))
    return -0.02 * top, 1.05 * top


def term_series(history, key, split, kl_weight=None):
    """(epochs, values) of one loss term ("recon", "kl" or "loss") on one split of a run's history;
    "loss" is recomputed as recon + kl_weight·KL (the history records the test loss only)."""
    epochs = [r["epoch"] for r in history]
    if key == "loss":
        return epochs, [vae_loss(r[f"{split}_recon"], r[f"{split}_kl"], kl_weight)["loss"]
                        for r in history]
    return epochs, [r[f"{split}_{key}"] for r in history]


def plot_loss_curves(path, runs, title, recon, splits=("test",), kl_weight=None, caption=None,
                     ncols=None, zoom_kl=False):
    """The loss terms of several runs ({label: run}) on the given splits, a panel each for
    reconstruction and KL and, with `kl_weight`, the loss they add up to (train: the mean over
    each epoch's minibatches; test: after the epoch); `ncols` panels to a row, each with its
    legend below it. One colour per run; with both splits, test dashed. zoom_kl: the KL once more,
    its axis fitted to the curves, where runs differ by tenths of a nat (the KL panel's axis
    starts at 0, kl_range)."""
    ylabels = {"recon": RECON_LABELS[recon], "kl": KL_LABEL}
    if kl_weight is not None:
        ylabels["loss"] = f"loss = recon + {kl_weight:g}·KL" + (
            ", nats per image" if recon == "bce" else " per image")
    # {panel's y label: {curve label: (epochs, values)}}: one curve per run and split in each panel
    panels = {ylabel: {f"{label}, {split}" if len(splits) > 1 else label:
                       term_series(run.history, key, split, kl_weight)
                       for label, run in runs.items() for split in splits}
              for key, ylabel in ylabels.items()}
    if zoom_kl:
        panels[f"{KL_LABEL},\nzoomed to the curves"] = panels[KL_LABEL]
    styles = {f"{label}, {split}": {"color": f"C{i}", "linestyle": "--" if split == "test" else "-"}
              for i, label in enumerate(runs) for split in splits}
    common.plot_panels(path, panels, xlabel="epoch", title=title, markers=False, styles=styles,
                       ylims={KL_LABEL: kl_range(panels[KL_LABEL])}, caption=caption,
                       legend_below=True, ncols=ncols)


def collapse_caption(runs):
    """A caption naming the runs ({label: run}) whose test KL ended below COLLAPSED_KL nats: their
    code collapsed onto the prior, so each decoder learns the same average image and their curves
    lie on one line. None when fewer than two collapsed."""
    collapsed = {label: run.history[-1] for label, run in runs.items()
                 if run.history[-1]["test_kl"] < COLLAPSED_KL}
    if len(collapsed) < 2:
        return None
    recons = [last["test_recon"] for last in collapsed.values()]
    middle, spread = (max(recons) + min(recons)) / 2, (max(recons) - min(recons)) / 2
    return (f"{', '.join(collapsed)}: one line in each panel (final test reconstruction "
            f"{middle:.4g} ± {spread:.1g}). Their KL ends below {COLLAPSED_KL:g} nats: the code "
            "collapsed onto the prior, so each decoder learns the same average image.")


# ----------------------------------------------------------------------------------------------
# EXPERIMENTS
# ----------------------------------------------------------------------------------------------
def run_vae(args, data, generator, figures=True):
    """Train one VAE (or with --load, load its weights file args.load), draw its figures (unless
    a sweep draws its own), write its metrics, all under run_name(args). Returns (final block,
    the run, the fixed noise decoded by the final model)."""
    out, device = Path(args.out_dir), data[0][0].device
    name, kind = run_name(args), f"vae_{args.arch}"
    model = build_vae(args).to(device)
    fixed_noise = fixed_noise_for(args, device)
    if args.load:
        run = common.load_run(args.load, kind, {"model": model})
    else:
        run = fit_vae(model, data, args, out / name, kind, generator, fixed_noise)
    final = {"epochs_trained": run.history[-1]["epoch"],
             **{f"test_{k}": v for k, v in evaluate_vae(model, data[1][0], args).items()}}
    if figures:  # (a sweep draws its own comparison instead)
        latents, statistics = latent_statistics(model, data[1][0], args.seed)
        final.update(statistics)
        vae_figures(model, data[1], args, name, run, fixed_noise, latents)
    final.update(cnn.sample_quality(prior_samples(model, len(data[1][0]), args, device),
                                    data[1][0], data[0][0], args))
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history,
                        final, **run.provenance())
    print(f"{name}: test recon {final['test_recon']:.2f} | test KL {final['test_kl']:.2f}")
    return final, run, decode_images(model, fixed_noise)


def run_sweep(args, data):
    """One VAE per KL weight (or latent size), each from the same seed; one comparison figure.
    With --load, args.load holds one weights file per member, in the sweep's order."""
    knob, values, tag = (("kl_weight", args.sweep_kl, "kl") if args.sweep_kl
                         else ("latent_dim", args.sweep_latent, "z"))
    name = run_name(args, f"vae_{args.arch}_sweep_{tag}", skip=(knob,))  # its own files
    for path, value in zip(args.load or [], values):  # all checked before any work
        trained = common.load_checkpoint(path, f"vae_{args.arch}")["args"][knob]
        if trained != value:
            flag = f"--{knob.replace('_', '-')}"
            common.fail(f"--load: {path} was trained with {flag} {trained:g}, but stands for the "
                        f"sweep's {flag} {value:g} (one file per member, in the sweep's order)")
    summary, rows, runs, seconds = {}, {}, {}, 0.0
    for i, value in enumerate(values):  # each member is the run `--<knob> <value>` alone would be
        member_args = argparse.Namespace(**{**vars(args), knob: value, "sweep_kl": None,
                                            "sweep_latent": None,
                                            "load": args.load[i] if args.load else None})
        generator = common.seed_everything(args.seed)  # same initial state for every member
        final, run, samples = run_vae(member_args, data, generator, figures=False)
        label = f"β = {value:g}" if tag == "kl" else f"z = {value}"
        rows[f"{label}\nrecon {final['test_recon']:.4g}\nKL {final['test_kl']:.3g}"] = samples
        summary[label], runs[label] = final, run
        seconds += run.seconds
    out = Path(args.out_dir)
    common.plot_image_rows(out / f"{name}.png", rows, title=f"{name}: the same {N_FIXED_NOISE} "
                           "z ~ N(0, I) decoded by each final model")
    plot_loss_curves(out / f"{name}_loss.png", runs, title=f"{name}: test loss terms per example",
                     recon=args.recon, caption=collapse_caption(runs),
                     ncols=1)  # one panel to a row: room for a legend of every member
    common.save_metrics(out / f"{name}_metrics.json", args, data[0][0].device, seconds, [], summary)


def run_classifier(args, data, generator):
    """Assignment C, task 2-4: the encoder's architecture trained as a 10-way classifier."""
    out, device, name = Path(args.out_dir), data[0][0].device, run_name(args)
    model = MLPClassifier().to(device)
    if args.load:
        run = common.load_run(args.load, CLASSIFIER, {"model": model})
    else:
        run = fit_classifier(model, data, args, out / name, generator)
    train, test = evaluate_classifier(model, *data[0]), evaluate_classifier(model, *data[1])
    final = {"epochs_trained": run.history[-1]["epoch"], "train_ce": train["ce"],
             "train_acc": train["acc"], "test_ce": test["ce"], "test_acc": test["acc"]}
    common.plot_panels(out / f"{name}_curves.png",
                       {"cross-entropy": common.epoch_series(run.history, "ce"),
                        "accuracy": common.epoch_series(run.history, "acc")},
                       xlabel="epoch", title="MLP classifier 784-500-10 on Fashion-MNIST")
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds,
                        run.history, final, **run.provenance())
    print(f"{name}: test acc {test['acc']:.4f}")


def load_classifier(args, device):
    """The weights of --experiment classifier, which init-from-classifier starts from; absent is
    one line giving the command that writes them."""
    path = Path(args.classifier_weights or Path(args.out_dir) / f"{CLASSIFIER}.pt")
    common.require_file(path, "--classifier-weights", "python vae.py --experiment classifier "
                        f"--data-dir {args.data_dir} --out-dir {path.parent}")
    classifier = MLPClassifier().to(device)
    common.load_weights(path, CLASSIFIER, {"model": classifier}, flag="--classifier-weights")
    return classifier


def run_init_comparison(args, data):
    """An MLP VAE whose encoder starts from the classifier's weights, against the same VAE from
    random initialisation, same seed and epochs. With --load, args.load holds their two weights
    files (classifier-initialised, then random-start) and the classifier is not needed."""
    out, device = Path(args.out_dir), data[0][0].device
    classifier = None if args.load else load_classifier(args, device)
    summary, runs, seconds = {}, {}, 0.0
    for i, start in enumerate(INIT_STARTS):
        kind = f"vae_mlp_init_{start}"
        name = Path(args.load[i]).stem if args.load else run_name(args, kind)
        generator = common.seed_everything(args.seed)
        model = build_vae(args).to(device)
        if args.load:
            run = common.load_run(args.load[i], kind, {"model": model})
        else:
            if start == "classifier":  # the one difference between the two
                model.encoder.load_state_dict(classifier.encoder.state_dict())
            run = fit_vae(model, data, args, out / name, kind, generator,
                          fixed_noise_for(args, device))
        test, last = evaluate_vae(model, data[1][0], args), run.history[-1]  # last: train means
        summary[start] = {"epochs_trained": last["epoch"], "train_recon": last["train_recon"],
                          "train_kl": last["train_kl"], "test_recon": test["recon"],
                          "test_kl": test["kl"]}
        common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history,
                            summary[start], **run.provenance())
        runs["encoder from the classifier" if start == "classifier" else "random init"] = run
        seconds += run.seconds
    name = run_name(args)  # the comparison's own files: vae_mlp_init plus the knobs
    init_loss_figure(out / f"{name}.png", runs, args)
    common.plot_image_rows(out / f"{name}_samples.png",
                           {f"{label}\nepoch {epoch}": images for label, run in runs.items()
                            for epoch, images in sorted(run.extra.get("snapshots", {}).items())},
                           title=f"the same {N_FIXED_NOISE} z ~ N(0, I) decoded during training")
    common.save_metrics(out / f"{name}_metrics.json", args, device, seconds, [], summary)


def init_loss_figure(path, runs, args):
    """The two init-from-classifier runs' loss terms, train and test, 2x2: reconstruction, KL,
    their sum and the KL zoomed (the starts differ there by a tenth of a nat)."""
    plot_loss_curves(path, runs, splits=("train", "test"), recon=args.recon, kl_weight=args.kl_weight,
                     ncols=2, zoom_kl=True,  # 2x2: room for the legends
                     title=f"MLP VAE (z = {args.latent_dim}): encoder initialised from the classifier vs at random")


def replot_init_comparison(args):
    """--replot: the init-from-classifier loss figure from its two runs' metrics files."""
    runs = {}
    for label, path in zip(("encoder from the classifier", "random init"), args.replot):
        metrics, _ = common.read_metrics(path, "train_kl", "an init-from-classifier run")
        common.use_run_args(args, metrics, ("recon", "kl_weight", "latent_dim", "epochs"), path)  # the title's and name's
        runs[label] = common.LoadedRun({"history": metrics["history"], "seconds": metrics["wall_seconds"],
                                        "epoch": metrics["history"][-1]["epoch"], "args": metrics["args"]})
    init_loss_figure(Path(args.out_dir) / f"{run_name(args)}.png", runs, args)


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    generator = common.seed_everything(args.seed)
    common.out_dir(args)
    if args.replot:  # runs whose weights are not kept: their curves from their metrics files
        return replot_init_comparison(args)
    data = common.load_mnist_like("fashion-mnist", args.data_dir, device, args.limit)
    if args.experiment == "classifier":
        run_classifier(args, data, generator)
    elif args.experiment == "init-from-classifier":
        run_init_comparison(args, data)
    elif args.sweep_kl or args.sweep_latent:
        run_sweep(args, data)
    else:
        run_vae(args, data, generator)


if __name__ == "__main__":
    common.run_main(main)
