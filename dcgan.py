"""DCGAN on Fashion-MNIST: assignment C, task 1, with the report's exact architecture.

The report's two networks (shapes at each layer in the classes): BatchNorm and LeakyReLU (slope
0.2, as in the report) between layers, no biases (BatchNorm's shift replaces them).

Stabilising choices, and why:
- Adam at 2e-4 with β1 = 0.5 for both nets, weights from N(0, 0.02), BatchNorm scales from
  N(1, 0.02) (Radford et al. 2016, Sec. 4: the default β1 = 0.9 made their training oscillate).
- Images scaled to [-1, 1] to match the generator's Tanh.
- The non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, Sec. 3): early on D
  rejects every fake and log(1 - D(G(z))) has almost no gradient.
- No label smoothing by default; --real-label 0.9 gives one-sided smoothing (Salimans et al.
  2016, Sec. 3.4) for anyone who sees D win too early.
Samples: 12 fixed noise vectors after epochs 1, 5, 10, 25, 50, 100. Sample quality: the Fréchet
distance of 2,000 fixed-noise samples after every epoch (the test of "the generator degrades after
~40 epochs"), and of 10,000 samples at the end (cnn.sample_quality; both need cnn.py's weights).

Page: docs/dcgan.md (what it does, results, answers, every flag)
Run: python dcgan.py --data-dir ../shared/data            (100 epochs, as the report)
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import cnn
import common

KIND = "dcgan"
NZ = 100
SNAPSHOT_EPOCHS = (1, 5, 10, 25, 50, 100)  # the fixed noise is decoded after these (those <= --epochs)
N_FIXED_NOISE = 12
FRECHET_SAMPLES = 2000  # per-epoch Fréchet distance: this many fixed-noise samples vs all test images


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=100, batch_size=128, lr=2e-4)
    parser.add_argument("--beta1", type=common.nonnegative_float, default=0.5,
                        help="Adam's β1 for both nets (Radford et al. 2016)")
    parser.add_argument("--real-label", type=common.positive_float, default=1.0,
                        help="target of D on real images; 0.9 = one-sided label smoothing")
    cnn.add_sample_quality_args(parser)
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    if args.patience:
        parser.error("--patience watches a test loss, and a GAN has none; train for --epochs")
    if args.beta1 >= 1 or args.real_label > 1:
        parser.error("--beta1 must be < 1 and --real-label <= 1")
    return args


# ----------------------------------------------------------------------------------------------
# MODELS
# ----------------------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (nz) → ConvT 7x7 → ConvT 4x4/2 → ConvT 4x4/2 → Conv 3x3 → Tanh: an image in [-1, 1];
    791,776 parameters."""

    def __init__(self, nz=NZ):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, 128, 7, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),    # (B, 128, 7, 7)
            nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),  # (B, 64, 14, 14)
            nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(0.2),   # (B, 32, 28, 28)
            nn.Conv2d(32, 1, 3, 1, 1, bias=False), nn.Tanh(),                                       # (B, 1, 28, 28)
        )

    def forward(self, z):  # (B, nz) -> (B, 1, 28, 28) in [-1, 1]
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """Image → Conv 3x3 → three Conv 4x4/2 → Conv 3x3 → one logit of "real"; 691,680 parameters,
    13% fewer than the generator's."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(0.2),     # (B, 32, 28, 28)
            nn.Conv2d(32, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),    # (B, 64, 14, 14)
            nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),  # (B, 128, 7, 7)
            nn.Conv2d(128, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2),  # (B, 256, 3, 3)
            nn.Conv2d(256, 1, 3, bias=False),                                                  # (B, 1, 1, 1)
        )

    def forward(self, x):  # (B, 1, 28, 28) in [-1, 1] -> (B,) logits of "real"
        return self.net(x).flatten()


def init_weights(module):
    """N(0, 0.02) for convolutions, N(1, 0.02) for BatchNorm scales (Radford et al. 2016, Sec. 4)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# LOSSES (Goodfellow et al. 2014, Eq. 1; averaged over the batch)
# ----------------------------------------------------------------------------------------------
def discriminator_loss(real_logits, fake_logits, real_label=1.0):
    """-[log D(x) + log(1 - D(G(z)))]: D maximises Eq. 1 by minimising this binary cross-entropy,
    with target `real_label` (1, or 0.9 for one-sided smoothing) on real images and 0 on fakes."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits):
    """-log D(G(z)), the non-saturating form of G's objective (Goodfellow et al. 2014, Sec. 3)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ----------------------------------------------------------------------------------------------
# TRAINING
# ----------------------------------------------------------------------------------------------
def train_epoch(G, D, opt_g, opt_d, x, args, epoch, generator):
    """One pass over x; per-batch device tensors of both losses, D(x) and D(G(z)). The noise
    comes from the CPU generator, so runs repeat on any device."""
    G.train()
    D.train()
    n_batches = common.num_batches(len(x), args.batch_size)
    terms = {k: torch.empty(n_batches, device=x.device) for k in ("loss_d", "loss_g", "d_x", "d_g_z")}
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, n_batches, f"epoch {epoch}")):
        real = x[idx] * 2 - 1                                      # [0, 1] -> [-1, 1]
        z = common.to_device(torch.randn(len(idx), NZ, generator=generator), x.device)
        # D step: maximise log D(x) + log(1 - D(G(z))); fakes detached so G is not updated here
        with common.autocast(args, x.device):
            fake = G(z)
            real_logits, fake_logits = D(real), D(fake.detach())
            loss_d = discriminator_loss(real_logits, fake_logits, args.real_label)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # G step: maximise log D(G(z)), through the just-updated D
        with common.autocast(args, x.device):
            loss_g = generator_loss(D(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        terms["loss_d"][i], terms["loss_g"][i] = loss_d.detach(), loss_g.detach()
        terms["d_x"][i] = torch.sigmoid(real_logits).mean().detach()
        terms["d_g_z"][i] = torch.sigmoid(fake_logits).mean().detach()
    return terms


@torch.no_grad()
def generate(G, z):
    """Images in [0, 1] from noise, with BatchNorm's running statistics."""
    G.eval()
    return (G(z) + 1).div(2).clamp(0, 1).cpu()


@torch.no_grad()
def final_numbers(G, history, extra, test_x, train_x, args):
    """The last epoch's losses and D outputs, the per-epoch scores' floor (when the run scored its
    epochs), and the final generator's sample quality: as many samples as test images, from noise
    of seed --seed + 2 (the same after --load), scored by cnn.sample_quality (the Fréchet distance
    of the CNN's features against the test images, the class histogram of the samples and its
    entropy)."""
    noise = torch.randn(len(test_x), NZ, generator=torch.Generator().manual_seed(args.seed + 2))
    samples = torch.cat([generate(G, z.to(test_x.device)) for z in noise.split(1000)])  # 1000 at a time
    final = {"epochs_trained": history[-1]["epoch"],
             **{k: history[-1][k] for k in ("loss_d", "loss_g", "d_x", "d_g_z")}}
    if "frechet_floor_2000" in extra:
        final["frechet_floor_2000"] = extra["frechet_floor_2000"]
    return {**final, **cnn.sample_quality(samples, test_x, train_x, args)}


def make_optimizers(G, D, args):
    """One Adam per net, both at --lr with β1 = --beta1 (Radford et al. 2016, Sec. 4)."""
    betas = (args.beta1, 0.999)
    return (torch.optim.Adam(G.parameters(), lr=args.lr, betas=betas),
            torch.optim.Adam(D.parameters(), lr=args.lr, betas=betas))


class EpochFrechet:
    """The Fréchet distance after every epoch, cheaply: FRECHET_SAMPLES samples of one fixed noise
    (seed --seed + 3, so the same images' drift is measured and training's random stream is
    untouched) against the CNN features of every test image, computed once. `floor`: as many real
    training images against the same test features, the best a generator can score at this sample
    count (smaller samples score higher: compare only with other 2,000-sample numbers)."""

    def __init__(self, judge, train_x, test_x, seed):
        self.judge = judge
        self.noise = torch.randn(FRECHET_SAMPLES, NZ, generator=torch.Generator().manual_seed(seed + 3))
        self.test_features, _ = cnn.features_and_predictions(judge, test_x)
        self.floor = cnn.real_floor(judge, train_x, self.test_features, FRECHET_SAMPLES, seed)

    def distance(self, images):
        features, _ = cnn.features_and_predictions(self.judge, images.to(self.test_features.device))
        return cnn.frechet_distance(features, self.test_features)

    def __call__(self, G):
        return self.distance(generate(G, self.noise.to(self.test_features.device)))


def fit(G, D, x, test_x, args, generator, fixed_noise, stem):
    """All args.epochs (a GAN has no test loss to stop on); the fixed noise decoded after each of
    SNAPSHOT_EPOCHS into run.extra["snapshots"]; with cnn.py's weights, the Fréchet distance of
    2,000 samples after every epoch (`frechet_2000`, and the seconds it took, `frechet_seconds`);
    <stem>.ckpt and <stem>.pt after every epoch."""
    opt_g, opt_d = make_optimizers(G, D, args)
    run = common.Run(args, stem, KIND, {"generator": G, "discriminator": D},
                     {"generator": opt_g, "discriminator": opt_d}, generator)
    snapshots = run.extra.get("snapshots", {})
    judge, _ = cnn.load_judge(args, x.device)
    frechet = EpochFrechet(judge, x, test_x, args.seed) if judge is not None else None
    for epoch in range(run.done + 1, args.epochs + 1):
        terms = train_epoch(G, D, opt_g, opt_d, x, args, epoch, generator)
        common.check_finite(epoch, run.weights_path, discriminator=terms["loss_d"], generator=terms["loss_g"])
        if epoch in SNAPSHOT_EPOCHS:
            snapshots[epoch] = generate(G, fixed_noise)
        record = {k: v.mean().item() for k, v in terms.items()}
        if frechet is not None:
            timer = common.Timer(x.device)
            record["frechet_2000"] = frechet(G)
            record["frechet_seconds"] = round(timer.seconds(), 2)
        run.log(epoch, record)
        run.save(epoch, snapshots=snapshots, **({"frechet_floor_2000": frechet.floor} if frechet else {}))
    return run


def run_name(args):
    """The loaded file's own name, or "dcgan" plus every knob that differs from the defaults
    (dcgan_e25, dcgan_real0.9, dcgan_beta0.9; --cnn-weights, a path, stays out)."""
    if args.load:
        return Path(args.load).stem
    return common.run_name(KIND, args, vars(parse_args([])), {"real_label": "real", "beta1": "beta"},
                           skip=("cnn_weights",))


# ----------------------------------------------------------------------------------------------
# FIGURES
# ----------------------------------------------------------------------------------------------
def figures(G, history, extra, fixed_noise, out, name):
    epochs = [r["epoch"] for r in history]
    curve = lambda key: (epochs, [r[key] for r in history])  # noqa: E731  (x, y) of one record key
    if "frechet_floor_2000" in extra:
        common.plot_curves(out / f"{name}_frechet.png",
                           {f"generator ({FRECHET_SAMPLES:,} fixed-noise samples)": curve("frechet_2000"),
                            f"floor: {FRECHET_SAMPLES:,} real training images":
                                (epochs, [extra["frechet_floor_2000"]] * len(epochs))},
                           xlabel="epoch", ylabel="Fréchet distance to the test images (CNN features)",
                           title="DCGAN: sample quality after every epoch (lower is better)", log_y=True,
                           styles={f"floor: {FRECHET_SAMPLES:,} real training images":
                                       {"linestyle": "--", "marker": "", "color": "grey"}})
    common.plot_panels(out / f"{name}_loss.png",
                       {"binary cross-entropy (mean over the epoch)":
                            {"discriminator": curve("loss_d"), "generator": curve("loss_g")},
                        "mean discriminator output":
                            {"D(x), real images": curve("d_x"), "D(G(z)), fakes": curve("d_g_z")}},
                       xlabel="epoch", title="DCGAN on Fashion-MNIST: losses and D's outputs")
    rows = {f"epoch {e}": images for e, images in sorted(extra["snapshots"].items())}
    rows.setdefault(f"epoch {epochs[-1]}", generate(G, fixed_noise))  # the final generator too
    for label, images in rows.items():
        common.plot_image_rows(out / f"{name}_{label.replace(' ', '')}.png", {label: images},
                               title=f"DCGAN: the {N_FIXED_NOISE} fixed noise vectors after {label}")
    common.plot_image_rows(out / f"{name}_samples.png", rows,
                           title=f"DCGAN: the same {N_FIXED_NOISE} noise vectors during training")


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    generator = common.seed_everything(args.seed)
    out, name = common.out_dir(args), run_name(args)
    G, D = Generator().to(device), Discriminator().to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    fixed_noise = torch.randn(N_FIXED_NOISE, NZ, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    if args.load:  # read before the data, so a wrong file fails at once
        run = common.load_run(args.load, KIND, {"generator": G, "discriminator": D})
    (train_x, _), (test_x, _) = common.load_mnist_like("fashion-mnist", args.data_dir, device, args.limit)
    if not args.load:
        run = fit(G, D, train_x, test_x, args, generator, fixed_noise, out / name)
    figures(G, run.history, run.extra, fixed_noise, out, name)
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history,
                        final_numbers(G, run.history, run.extra, test_x, train_x, args), **run.provenance())


if __name__ == "__main__":
    common.run_main(main)
