"""Variational autoencoders on Fashion-MNIST: assignment A task 2 (conv) and assignment C task 2 (MLP).

--arch conv   Encoder as cnn.py (Conv 32/64/128, 3x3, stride 2) → mean and log-variance of length
              256; the decoder mirrors it with ConvTranspose2d. Figures: loss curves, histogram of
              the 2-norms of the encodings, originals above their reconstructions.
--arch mlp    784 → 500 (LeakyReLU) → z, and back; z = 2 by default as in the report. Figures: 12
              fixed noise vectors decoded after epochs 1, 5, 10, 50, 100, loss curves, and for z = 2
              the means of the test set coloured by class.
--sweep-kl / --sweep-latent  one model per KL weight / latent size, one comparison figure.
--experiment classifier             the encoder's architecture (784 → 500 → 10) as a classifier.
--experiment init-from-classifier   an MLP VAE whose encoder starts from that classifier, against
                                    the same VAE from random initialisation.
Every VAE's metrics also hold the sample quality of as many z ~ N(0, I) images as the test set
has: the Fréchet distance in cnn.py's feature space and the class entropy (cnn.sample_quality).

Run:     python vae.py --arch conv --data-dir ../shared/data
         python vae.py --arch mlp --epochs 100 --data-dir ../shared/data
         python vae.py --arch mlp --sweep-kl 1,0.5,0.25 --data-dir ../shared/data
Reload:  python vae.py --arch conv --load figures/vae_conv.pt          (sweeps: --load DIR)
Writes:  figures/vae_<variant>_*.png, figures/vae_<variant>.pt, figures/vae_<variant>_metrics.json
"""
import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import cnn
import common

SNAPSHOT_EPOCHS = (1, 5, 10, 50, 100)  # when the fixed noise is decoded (those <= --epochs)
N_FIXED_NOISE = 12


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=30, batch_size=128, lr=1e-3)
    parser.add_argument("--arch", choices=["conv", "mlp"],
                        help="conv: assignment A's VAE; mlp: assignment C's 784-500-z VAE "
                             "(default: conv, and mlp for the two classifier experiments)")
    parser.add_argument("--experiment", choices=["vae", "classifier", "init-from-classifier"],
                        default="vae", help="what to train (the last two use the MLP encoder)")
    parser.add_argument("--recon", choices=["bce", "mse"], default="bce",
                        help="reconstruction loss, summed over pixels")
    parser.add_argument("--kl-weight", type=common.nonnegative_float, default=1.0,
                        help="β, the weight of the KL term (1 = the plain ELBO)")
    parser.add_argument("--latent-dim", type=common.positive_int,
                        help="length of z (default: 256 for conv, 2 for mlp)")
    sweep = parser.add_mutually_exclusive_group()
    sweep.add_argument("--sweep-kl", type=common.number_list(float, lambda v: v >= 0, ">= 0"),
                       metavar="W1,W2,...", help="train one model per KL weight and compare them")
    sweep.add_argument("--sweep-latent", type=common.number_list(int, lambda v: v > 0, "> 0"),
                       metavar="D1,D2,...", help="train one model per latent size and compare them")
    cnn.add_sample_quality_args(parser)
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    if args.experiment != "vae" and (args.arch == "conv" or args.sweep_kl or args.sweep_latent):
        parser.error(f"--experiment {args.experiment} uses the MLP encoder: no --arch conv, no sweep")
    args.arch = args.arch or ("conv" if args.experiment == "vae" else "mlp")
    if args.latent_dim is None:
        args.latent_dim = 256 if args.arch == "conv" else 2
    return args


# ----------------------------------------------------------------------------------------------
# MODELS
# ----------------------------------------------------------------------------------------------
def reparameterize(mu, logvar, generator):
    """z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2014, Sec. 2.4): sampling as a differentiable
    function of μ and σ. ε is drawn on the CPU generator so runs repeat on any device."""
    eps = torch.randn(mu.shape, generator=generator).to(mu.device)
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
    """How far the decoded image is from x; summed over the 784 pixels, averaged over the batch.

    bce: -Σ_pixels [x log σ(l) + (1 - x) log(1 - σ(l))]  (Bernoulli decoder, Kingma & Welling
         2014, Appendix C.1; from logits for numerical stability)
    mse: Σ_pixels (σ(l) - x)²  (a Gaussian decoder with fixed variance, up to constants)
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        per_pixel = (torch.sigmoid(logits) - x) ** 2
    return per_pixel.flatten(1).sum(1).mean()


def kl_divergence(mu, logvar):
    """KL(q(z|x) || N(0, I)) = -½ Σ_j (1 + log σ_j² - μ_j² - σ_j²)  (Kingma & Welling 2014,
    Appendix B). Summed over the latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def classification_loss(logits, labels):
    """Cross-entropy of the softmax, -(1/B) Σ_b log softmax(logits_b)[y_b]; averaged over the batch."""
    return F.cross_entropy(logits, labels)


# ----------------------------------------------------------------------------------------------
# TRAINING
# ----------------------------------------------------------------------------------------------
def train_epoch(model, optimizer, x, y, args, epoch, generator):
    """One pass; returns per-batch loss terms (device tensors): recon and kl for a VAE, ce for
    the classifier. The VAE minimises recon + β·KL, the negative ELBO when β = 1."""
    model.train()
    n_batches = common.num_batches(len(x), args.batch_size)
    terms = {}
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, n_batches, f"epoch {epoch}")):
        if isinstance(model, MLPClassifier):
            losses = {"ce": classification_loss(model(x[idx]), y[idx])}
            total = losses["ce"]
        else:
            logits, mu, logvar = model(x[idx], generator)
            losses = {"recon": reconstruction_loss(logits, x[idx], args.recon),
                      "kl": kl_divergence(mu, logvar)}
            total = losses["recon"] + args.kl_weight * losses["kl"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        for name, value in losses.items():
            terms.setdefault(name, torch.empty(n_batches, device=x.device))[i] = value.detach()
    return terms


@torch.no_grad()
def evaluate(model, x, y, args, batch_size=1000):
    """Mean loss terms over a split (and accuracy for the classifier), in eval mode. The VAE's
    z is sampled with a fixed-seed generator, so --load reproduces these numbers exactly."""
    model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    sums = {}
    for idx in common.batch_indices(len(x), batch_size, x.device):
        n = len(idx)
        if isinstance(model, MLPClassifier):
            logits = model(x[idx])
            batch = {"ce": classification_loss(logits, y[idx]),
                     "acc": (logits.argmax(1) == y[idx]).float().mean()}
        else:
            logits, mu, logvar = model(x[idx], generator)
            batch = {"recon": reconstruction_loss(logits, x[idx], args.recon),
                     "kl": kl_divergence(mu, logvar)}
        for name, value in batch.items():
            sums[name] = sums.get(name, 0.0) + value.item() * n
    return {name: total / len(x) for name, total in sums.items()}


def fit(model, data, args, run, generator, fixed_noise=None, resume_optional=False):
    """Train `model` for args.epochs, checkpointing to <out>/<run>.pt after every epoch.

    Decodes `fixed_noise` after each epoch in SNAPSHOT_EPOCHS (kept in the checkpoint, so --load
    redraws them). Returns the checkpoint-like dict {history, seconds, snapshots}.
    """
    (train_x, train_y), (test_x, test_y) = data
    device = train_x.device
    path = Path(args.out_dir) / f"{run}.pt"
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    models, optimizers = {"model": model}, {"optimizer": optimizer}
    history, seconds, done, snapshots = [], 0.0, 0, {}
    if args.resume and (path.is_file() or not resume_optional):
        checkpoint = common.load_resume_checkpoint(path, run)
        history, seconds, done = common.restore_run(checkpoint, path, models, optimizers, generator)
        snapshots = checkpoint["snapshots"]
        print(f"resuming {path} after epoch {done} of {args.epochs}")
    for epoch in range(done + 1, args.epochs + 1):
        timer = common.Timer(device)
        terms = train_epoch(model, optimizer, train_x, train_y, args, epoch, generator)
        common.check_finite(epoch, path, **terms)
        record = {"epoch": epoch, **{f"train_{k}": v.mean().item() for k, v in terms.items()}}
        record.update({f"test_{k}": v for k, v in evaluate(model, test_x, test_y, args).items()})
        if isinstance(model, MLPClassifier):
            record["train_acc"] = evaluate(model, train_x, train_y, args)["acc"]
            record["test_loss"] = record["test_ce"]
        else:
            record["test_loss"] = record["test_recon"] + args.kl_weight * record["test_kl"]
        if fixed_noise is not None and epoch in SNAPSHOT_EPOCHS:
            snapshots[epoch] = decode_images(model, fixed_noise)
        record["seconds"] = round(timer.seconds(), 2)
        seconds += record["seconds"]
        history.append(record)
        common.save_run(path, run, args, epoch, history, seconds, generator, models, optimizers,
                        snapshots=snapshots)
        if common.log_epoch(history, args.epochs, args.patience):
            break
    return {"history": history, "seconds": seconds, "snapshots": snapshots,
            "trained_with": vars(args)}


def train_or_load(model, data, args, run, generator, fixed_noise=None, load_path=None,
                  resume_optional=False):
    """--load: put the weights (and the history and snapshots of their run) back; else train."""
    if load_path is None:
        return fit(model, data, args, run, generator, fixed_noise, resume_optional)
    checkpoint = common.load_checkpoint(load_path, run)
    history, seconds, done = common.restore_run(checkpoint, load_path, {"model": model})
    print(f"loaded {load_path} (trained {done} epochs); not training")
    return {"history": history, "seconds": seconds, "snapshots": checkpoint["snapshots"],
            "trained_with": checkpoint["args"]}


def member_path(args, run):
    """Where --load finds one model of a multi-model run: --load names the folder."""
    return Path(args.load) / f"{run}.pt" if args.load else None


# ----------------------------------------------------------------------------------------------
# FIGURES
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def decode_images(model, z):
    model.eval()
    return torch.sigmoid(model.decode(z)).cpu()  # (N, 1, 28, 28) in [0, 1]


def prior_samples(model, n, args, device):
    """n images decoded from z ~ N(0, I) (their own seeded stream), for the sample-quality metric."""
    z = torch.randn(n, args.latent_dim, generator=torch.Generator().manual_seed(args.seed + 3))
    return torch.cat([decode_images(model, chunk.to(device)) for chunk in z.split(1000)])


def fixed_noise_for(latent_dim, args, device):
    """The 12 noise vectors decoded at every snapshot, from their own seeded stream."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    return torch.randn(N_FIXED_NOISE, latent_dim, generator=generator).to(device)


@torch.no_grad()
def vae_figures(model, test, args, run, result, fixed_noise):
    out = Path(args.out_dir)
    x, y = test
    recon_label = f"reconstruction ({args.recon}, summed over pixels)"
    common.plot_panels(out / f"{run}_loss.png",
                       {recon_label: common.epoch_series(result["history"], "recon"),
                        "KL(q(z|x) || N(0, I))": common.epoch_series(result["history"], "kl")},
                       xlabel="epoch", title=f"{run}: loss terms per example (β = {args.kl_weight:g})")
    model.eval()
    originals = x[:4]
    mu, logvar = model.encode(originals)
    common.plot_image_rows(out / f"{run}_reconstructions.png",
                           {"test image": originals, "decoded\nfrom z = μ": decode_images(model, mu)},
                           title=f"{run}: reconstructions")
    mu, logvar = map(torch.cat, zip(*(model.encode(x[idx])
                                      for idx in common.batch_indices(len(x), 1000, x.device))))
    z = reparameterize(mu, logvar, torch.Generator().manual_seed(args.seed))
    prior = torch.randn(mu.shape, generator=torch.Generator().manual_seed(args.seed + 2))
    common.plot_histograms(out / f"{run}_norms.png",
                           {"‖μ‖, encoder means": mu.norm(dim=1),
                            "‖z‖, z ~ q(z|x)": z.norm(dim=1),
                            "‖z‖, z ~ N(0, I) prior": prior.norm(dim=1)},
                           xlabel="2-norm", title=f"{run}: norms over the {len(x)} test images")
    rows = {f"epoch {e}": images for e, images in sorted(result["snapshots"].items())}
    last = result["history"][-1]["epoch"]
    rows.setdefault(f"epoch {last}", decode_images(model, fixed_noise))  # the final model too
    common.plot_image_rows(out / f"{run}_samples.png", rows,
                           title=f"{run}: the same {N_FIXED_NOISE} z ~ N(0, I) decoded during training")
    if args.latent_dim == 2:
        common.plot_scatter(out / f"{run}_latent.png", mu, y, common.class_names("fashion-mnist"),
                            title=f"{run}: encoder means μ of the test set")
    # active units (Burda et al. 2016, Sec. 5.2): latent dimensions whose mean moves with the input
    return {"mu_norm_mean": mu.norm(dim=1).mean().item(), "z_norm_mean": z.norm(dim=1).mean().item(),
            "active_units": int((mu.var(0) > 0.01).sum().item())}


# ----------------------------------------------------------------------------------------------
# EXPERIMENTS
# ----------------------------------------------------------------------------------------------
def run_vae(args, data, generator, run, load_path, resume_optional=False, figures=True):
    """Train (or load) one VAE, draw its figures (unless a sweep draws them), write its metrics.
    Returns (final block, training result, the fixed noise decoded by the final model)."""
    device = data[0][0].device
    model = build_vae(args).to(device)
    fixed_noise = fixed_noise_for(args.latent_dim, args, device)
    result = train_or_load(model, data, args, run, generator, fixed_noise, load_path,
                           resume_optional)
    final = {"epochs_trained": result["history"][-1]["epoch"],
             **{f"test_{k}": v for k, v in evaluate(model, *data[1], args).items()}}
    final["test_loss"] = final["test_recon"] + args.kl_weight * final["test_kl"]
    if figures:
        final.update(vae_figures(model, data[1], args, run, result, fixed_noise))
    final.update(cnn.sample_quality(prior_samples(model, len(data[1][0]), args, device),
                                    data[1][0], data[0][0], args))
    common.save_metrics(Path(args.out_dir) / f"{run}_metrics.json", args, device,
                        result["seconds"], result["history"], final,
                        trained_with=result["trained_with"])
    print(f"{run}: test recon {final['test_recon']:.2f} | test KL {final['test_kl']:.2f}")
    return final, result, decode_images(model, fixed_noise)


def run_sweep(args, data):
    """One VAE per KL weight (or latent size), each from the same seed; one comparison figure."""
    knob, values, tag = (("kl_weight", args.sweep_kl, "kl") if args.sweep_kl
                         else ("latent_dim", args.sweep_latent, "z"))
    name = f"vae_{args.arch}_sweep_{tag}"
    summary, rows, seconds = {}, {}, 0.0
    test_curves = {"test reconstruction": {}, "test KL": {}}
    for value in values:
        member = argparse.Namespace(**{**vars(args), knob: value, "sweep_kl": None,
                                       "sweep_latent": None})
        run = f"vae_{args.arch}_{tag}{value:g}"
        generator = common.seed_everything(args.seed)  # same initial state for every member
        final, result, samples = run_vae(member, data, generator, run, member_path(args, run),
                                         resume_optional=True, figures=False)
        label = f"β = {value:g}" if tag == "kl" else f"z = {value}"
        rows[f"{label}\nrecon {final['test_recon']:.1f}\nKL {final['test_kl']:.1f}"] = samples
        summary[label] = final
        seconds += result["seconds"]
        for key, panel in (("recon", "test reconstruction"), ("kl", "test KL")):
            test_curves[panel][label] = common.epoch_series(result["history"], key, ("test",))["test"]
    out = Path(args.out_dir)
    common.plot_image_rows(out / f"{name}.png", rows, title=f"{name}: the same {N_FIXED_NOISE} "
                           "z ~ N(0, I) decoded by each final model")
    common.plot_panels(out / f"{name}_loss.png", test_curves, xlabel="epoch",
                       title=f"{name}: test loss terms per example", markers=False)
    common.save_metrics(out / f"{name}_metrics.json", args, data[0][0].device, seconds, [], summary)


def run_classifier(args, data, generator, load_path):
    """Assignment C, task 2-4: the encoder's architecture trained as a 10-way classifier."""
    run, device = "vae_classifier", data[0][0].device
    model = MLPClassifier().to(device)
    result = train_or_load(model, data, args, run, generator, load_path=load_path)
    (train_x, train_y), (test_x, test_y) = data
    train, test = evaluate(model, train_x, train_y, args), evaluate(model, test_x, test_y, args)
    final = {"epochs_trained": result["history"][-1]["epoch"], "train_ce": train["ce"],
             "train_acc": train["acc"], "test_ce": test["ce"], "test_acc": test["acc"]}
    common.plot_panels(Path(args.out_dir) / f"{run}_curves.png",
                       {"cross-entropy": common.epoch_series(result["history"], "ce"),
                        "accuracy": common.epoch_series(result["history"], "acc")},
                       xlabel="epoch", title="MLP classifier 784-500-10 on Fashion-MNIST")
    common.save_metrics(Path(args.out_dir) / f"{run}_metrics.json", args, device,
                        result["seconds"], result["history"], final,
                        trained_with=result["trained_with"])
    print(f"{run}: test acc {test['acc']:.4f}")
    return model


def run_init_comparison(args, data):
    """An MLP VAE whose encoder starts from the classifier's weights, against the same VAE from
    random initialisation, same seed and epochs."""
    out, device = Path(args.out_dir), data[0][0].device
    classifier_path = (Path(args.load) if args.load else out) / "vae_classifier.pt"
    classifier = MLPClassifier().to(device)
    if classifier_path.is_file():
        common.restore_run(common.load_checkpoint(classifier_path, "vae_classifier"),
                           classifier_path, {"model": classifier})
    elif args.load:
        common.fail(f"no classifier weights at {classifier_path}")
    else:
        print(f"no classifier weights at {classifier_path}: training the classifier first")
        classifier = run_classifier(args, data, common.seed_everything(args.seed), None)
    summary, panels, seconds = {}, {"test reconstruction": {}, "test KL": {}}, 0.0
    for start in ("classifier", "random"):
        run = f"vae_mlp_init_{start}"
        generator = common.seed_everything(args.seed)
        model = build_vae(args).to(device)
        if start == "classifier":
            model.encoder.load_state_dict(classifier.encoder.state_dict())
        result = train_or_load(model, data, args, run, generator, load_path=member_path(args, run),
                               resume_optional=True)
        final = evaluate(model, *data[1], args)
        summary[start] = {"epochs_trained": result["history"][-1]["epoch"],
                          **{f"test_{k}": v for k, v in final.items()}}
        common.save_metrics(out / f"{run}_metrics.json", args, device, result["seconds"],
                            result["history"], summary[start], trained_with=result["trained_with"])
        seconds += result["seconds"]
        for key, panel in (("recon", "test reconstruction"), ("kl", "test KL")):
            panels[panel][f"encoder from the {start}" if start == "classifier" else "random init"] = \
                common.epoch_series(result["history"], key, ("test",))["test"]
    common.plot_panels(out / "vae_mlp_init.png", panels, xlabel="epoch", markers=False,
                       title=f"MLP VAE (z = {args.latent_dim}): encoder initialised from the "
                             "classifier vs at random")
    common.save_metrics(out / "vae_mlp_init_metrics.json", args, device, seconds, [], summary)


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    generator = common.seed_everything(args.seed)
    common.out_dir(args)
    data = common.load_mnist_like("fashion-mnist", args.data_dir, device, args.limit)
    if args.experiment == "classifier":
        run_classifier(args, data, generator, args.load)
    elif args.experiment == "init-from-classifier":
        run_init_comparison(args, data)
    elif args.sweep_kl or args.sweep_latent:
        run_sweep(args, data)
    else:
        run_vae(args, data, generator, f"vae_{args.arch}", args.load)


if __name__ == "__main__":
    main()
