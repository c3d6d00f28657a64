"""Autoencoders: assignment B parts 1-2 (Fashion-MNIST) and assignment E tasks 1-5 (MNIST).

One --experiment per task (EXPERIMENTS holds each one's data set, default epochs and loss):
  fc                  784-512-128-2-128-512-784 MLP autoencoder (ReLU, sigmoid output), MSE.
  naive               fc's decoder fed 10 random inputs z ~ N(0, I) (--naive-distribution).
  normalized          fc with a non-affine BatchNorm on the bottleneck (each neuron mean 0,
                      variance 1), its decoder fed the same draws; the codes of both drawn.
  conv                conv autoencoder to a d-dimensional code (--latent-dim, default 12), mean
                      L1 (ConvEncoder says why this shape; --no-fc: strided convs instead of FC).
  classifier          conv's encoder + a two-layer MLP head, cross-entropy.
  classifier-decoder  classifier's encoder frozen, a fresh conv decoder trained on L1; its loss
                      drawn with conv's, both latent spaces compared (latent_spread, PCA).
  few-labels          the classifier trained on the first 100 training images only.
  transfer            the same, its encoder initialised from conv's (--freeze-epochs,
                      --encoder-lr-factor); one figure against few-labels.
Each experiment trains at most one model (naive none). One that builds on another's weights reads
them from --<name>-weights, by default that run's file in --out-dir; absent, it stops with the
command to run first (nothing is trained behind your back). naive and normalized also score their
samples with cnn.py's classifier (Fréchet distance, class entropy).

Page: docs/autoencoder.md (what it does, results, answers, every flag)
Run: python autoencoder.py --experiment fc --data-dir ../shared/data   (docs/autoencoder.md gives the order)
"""
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import cnn
import common


@dataclass(frozen=True)
class Experiment:
    dataset: str            # "fashion-mnist" or "mnist"
    epochs: int | None      # the default --epochs (None: trains nothing)
    eval_every: int | None  # the default --eval-every
    run: str                # its checkpoint kind and the base of its run names (run_name)
    loss: str | None        # the optimised loss: "mse", "l1" or "ce"
    needs: tuple = ()       # experiments whose weights it reads, each from --<name>-weights


EXPERIMENTS = {
    "fc": Experiment("fashion-mnist", 30, 1, "autoencoder_fc", "mse"),
    "naive": Experiment("fashion-mnist", None, None, "autoencoder_naive", None, needs=("fc",)),
    "normalized": Experiment("fashion-mnist", 30, 1, "autoencoder_normalized", "mse", needs=("fc",)),
    "conv": Experiment("mnist", 20, 1, "autoencoder_conv", "l1"),
    "classifier": Experiment("mnist", 10, 1, "autoencoder_classifier", "ce"),
    "classifier-decoder": Experiment("mnist", 20, 1, "autoencoder_classifier_decoder", "l1",
                                     needs=("conv", "classifier")),
    "few-labels": Experiment("mnist", 300, 5, "autoencoder_few_labels", "ce"),
    "transfer": Experiment("mnist", 300, 5, "autoencoder_transfer", "ce", needs=("conv", "few-labels")),
}
# the runs others build on, each read from --<name>-weights: who reads it, and what it is to them
DEPENDENCIES = {
    "fc": "naive, normalized: the fc autoencoder",
    "conv": "classifier-decoder, transfer: the conv autoencoder, FC variant",
    "classifier": "classifier-decoder: the classifier whose encoder it keeps",
    "few-labels": "transfer: the few-labels run whose history the comparison figure draws",
}
LATENT_DIM = 12  # the default d of the MNIST experiments
N_LABELLED = 100  # assignment E task 4: torch.arange(100) of the training set
N_GENERATED = 10


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=None, batch_size=128, lr=1e-3,
                           load_help=common.LOAD_HELP + " (any experiment but naive, which "
                                                        "trains nothing)")
    parser.add_argument("--experiment", choices=list(EXPERIMENTS), default="fc",
                        help="which assignment task to run (see the description above)")
    parser.add_argument("--latent-dim", type=common.positive_int,
                        help=f"d, the code length of the MNIST conv experiments (default {LATENT_DIM}); "
                             "the fc autoencoders keep assignment B's two neurons")
    parser.add_argument("--no-fc", action="store_true",
                        help="conv: reach d with strided convolutions instead of an FC layer")
    parser.add_argument("--eval-every", type=common.positive_int,
                        help="evaluate every N epochs, and at the first and last "
                             "(default 1; 5 for few-labels and transfer)")
    parser.add_argument("--naive-distribution", choices=["normal", "uniform-box"], default="normal",
                        help="naive: draw the decoder inputs from N(0, I), or uniformly from the "
                             "box spanned by the training codes")
    parser.add_argument("--freeze-epochs", type=common.nonnegative_int, default=0,
                        help="transfer: train only the MLP head for the first N epochs")
    parser.add_argument("--encoder-lr-factor", type=common.nonnegative_float, default=1.0,
                        help="transfer: the pretrained encoder's learning rate is --lr times this")
    weights = parser.add_argument_group("the weights an experiment builds on (absent: the error "
                                        "gives the command that makes them)")
    for name, reader in DEPENDENCIES.items():
        weights.add_argument(f"--{name}-weights", metavar="FILE",
                             help=f"{reader} (default: {EXPERIMENTS[name].run}.pt in --out-dir)")
    cnn.add_sample_quality_args(parser)
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    experiment = EXPERIMENTS[args.experiment]
    if args.experiment == "naive" and (args.load or args.resume):
        parser.error(f"{'--load' if args.load else '--resume'}: naive trains nothing of its own; "
                     "it decodes with the fc autoencoder that --fc-weights names")
    for name in DEPENDENCIES:
        if weights_flag_value(args, name) and name not in experiment.needs:
            parser.error(f"--{name}-weights is not read by --experiment {args.experiment}")
    if experiment.dataset == "fashion-mnist" and args.latent_dim is not None:
        parser.error("the fc autoencoders have assignment B's two-neuron bottleneck; "
                     "--latent-dim is for the MNIST experiments")
    if args.no_fc and args.experiment != "conv":
        parser.error("--no-fc is an architecture study of --experiment conv only")
    for flag in ("freeze_epochs", "encoder_lr_factor"):
        if getattr(args, flag) != parser.get_default(flag) and args.experiment != "transfer":
            parser.error(f"--{flag.replace('_', '-')} sets the pretrained encoder's learning rate: "
                         "--experiment transfer only")
    args.latent_dim = args.latent_dim or LATENT_DIM
    if args.no_fc and args.latent_dim % 4:
        parser.error(f"--no-fc needs --latent-dim divisible by 4 (a (d/4)x2x2 map), got {args.latent_dim}")
    args.epochs = args.epochs or experiment.epochs
    args.eval_every = args.eval_every or experiment.eval_every
    return args


def weights_flag_value(args, name):
    """What --<name>-weights says (None when not given)."""
    return getattr(args, f"{name.replace('-', '_')}_weights")


# ----------------------------------------------------------------------------------------------
# MODELS
# ----------------------------------------------------------------------------------------------
class FCAutoencoder(nn.Module):
    """784 → 512 → 128 → 2 → 128 → 512 → 784, ReLU between layers, a linear code, sigmoid output.

    normalize=True ends the encoder with BatchNorm1d(2, affine=False): in training each neuron is
    standardised with the batch's mean and variance (so it has mean 0 and variance 1 exactly, on
    every batch); at test time with their running averages. Non-affine, so nothing can learn to
    scale the code back up: the decoder only ever sees standardised codes, and N(0, I) draws
    land where the codes are.
    """

    def __init__(self, normalize=False):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Flatten(),                                   # (B, 1, 28, 28) -> (B, 784)
            nn.Linear(784, 512), nn.ReLU(),                 # (B, 512)
            nn.Linear(512, 128), nn.ReLU(),                 # (B, 128)
            nn.Linear(128, 2),                              # (B, 2) the bottleneck
            *([nn.BatchNorm1d(2, affine=False)] if normalize else []),
        )
        self.decoder = nn.Sequential(
            nn.Linear(2, 128), nn.ReLU(),                   # (B, 128)
            nn.Linear(128, 512), nn.ReLU(),                 # (B, 512)
            nn.Linear(512, 784), nn.Sigmoid(),              # (B, 784) pixels in [0, 1]
            nn.Unflatten(1, (1, 28, 28)),                   # (B, 1, 28, 28)
        )

    def forward(self, x):
        return self.decoder(self.encoder(x))


class ConvEncoder(nn.Module):
    """(B, 1, 28, 28) → (B, d). MNIST digits are thin strokes on a 28x28 canvas: two stride-2 3x3
    convolutions (32, then 64 filters) halve the map twice to 64x7x7, where every unit sees a 7x7
    patch, a stroke segment. Striding rather than pooling lets the decoder mirror each step with
    a stride-2 ConvTranspose2d. The coarsest map (3,136 numbers) is far from d = 12, so one
    linear FC layer maps it to the code; a linear code keeps the latent unconstrained. Without
    it (fc=False, assignment E1's comparison) two more stride-2 convolutions reach (d/4)x2x2,
    so the code stays spatial: each number tied to a corner of the digit."""

    def __init__(self, latent_dim=12, fc=True):
        super().__init__()
        layers = [
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),    # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),   # (B, 64, 7, 7)
        ]
        if fc:
            layers += [nn.Flatten(), nn.Linear(64 * 7 * 7, latent_dim)]  # (B, 3136) -> (B, d)
        else:
            layers += [nn.Conv2d(64, 32, 3, stride=2, padding=1), nn.ReLU(),           # (B, 32, 4, 4)
                       nn.Conv2d(32, latent_dim // 4, 3, stride=2, padding=1),         # (B, d/4, 2, 2)
                       nn.Flatten()]                                                   # (B, d)
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, d) → (B, 1, 28, 28) in [0, 1]: the encoder's steps in reverse, with a BatchNorm after
    every hidden transposed convolution. Why the BatchNorm: while the code still carries no
    information, the L1 optimum is the per-pixel median, a black image (mean L1 0.13); a plain
    decoder reaches it within an epoch, its sigmoid saturates and training stalls there (measured:
    test L1 0.1325 at epochs 1 and 2 on full MNIST). Normalising the hidden maps keeps the output
    units off that plateau. Only the decoder has it, so the encoder (shared with the classifier,
    frozen in classifier-decoder) has no running statistics."""

    def __init__(self, latent_dim=12, fc=True):
        super().__init__()
        if fc:
            layers = [nn.Linear(latent_dim, 64 * 7 * 7), nn.ReLU(),                  # (B, 3136)
                      nn.Unflatten(1, (64, 7, 7))]                                   # (B, 64, 7, 7)
        else:
            layers = [nn.Unflatten(1, (latent_dim // 4, 2, 2)),                       # (B, d/4, 2, 2)
                      nn.ConvTranspose2d(latent_dim // 4, 32, 3, stride=2, padding=1,
                                         output_padding=1),                          # (B, 32, 4, 4)
                      nn.BatchNorm2d(32), nn.ReLU(),
                      nn.ConvTranspose2d(32, 64, 3, stride=2, padding=1),            # (B, 64, 7, 7)
                      nn.BatchNorm2d(64), nn.ReLU()]
        # output_padding=1 picks 14 (and 28) where a stride-2 transpose could also give 13 (27)
        layers += [nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),  # (B, 32, 14, 14)
                   nn.BatchNorm2d(32), nn.ReLU(),
                   nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1),   # (B, 1, 28, 28)
                   nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class ConvAutoencoder(nn.Module):
    def __init__(self, latent_dim=12, fc=True):
        super().__init__()
        self.encoder = ConvEncoder(latent_dim, fc)
        self.decoder = ConvDecoder(latent_dim, fc)

    def forward(self, x):
        return self.decoder(self.encoder(x))


class Classifier(nn.Module):
    """conv's encoder as the feature extractor, then a two-layer MLP: d → 64 (ReLU) → 10 logits."""

    def __init__(self, latent_dim=12):
        super().__init__()
        self.encoder = ConvEncoder(latent_dim)
        self.head = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):  # (B, 1, 28, 28) -> (B, 10)
        return self.head(self.encoder(x))


# ----------------------------------------------------------------------------------------------
# LOSSES
# ----------------------------------------------------------------------------------------------
def reconstruction_loss(reconstruction, x, kind):
    """mse: (1/(B·784)) Σ (x̂ - x)² (assignment B);  l1: (1/(B·784)) Σ |x̂ - x| (assignment E,
    "mean L1 error"). Both averaged over the pixels and over the batch."""
    difference = reconstruction - x
    return difference.pow(2).mean() if kind == "mse" else difference.abs().mean()


def classification_loss(logits, labels):
    """Cross-entropy of the softmax, -(1/B) Σ_b log softmax(logits_b)[y_b]; averaged over the batch."""
    return F.cross_entropy(logits, labels)


def loss_terms(model, x, y, loss):
    """The optimised term first ("mse", "l1" or "ce"), then accuracy for a classifier."""
    if loss == "ce":
        logits = model(x)
        return {"ce": classification_loss(logits, y), "acc": (logits.argmax(1) == y).float().mean()}
    return {loss: reconstruction_loss(model(x), x, loss)}


# ----------------------------------------------------------------------------------------------
# TRAINING
# ----------------------------------------------------------------------------------------------
def make_optimizer(model, args, pretrained_encoder=False):
    """Adam over the parameters that train. A pretrained encoder (transfer) gets its own group,
    so its learning rate can be scaled (--encoder-lr-factor) or held at 0 (--freeze-epochs)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not pretrained_encoder:
        return torch.optim.Adam(trainable, lr=args.lr)
    encoder = list(model.encoder.parameters())
    head = [p for p in trainable if all(p is not q for q in encoder)]  # the rest, by identity
    return torch.optim.Adam([{"params": encoder, "lr": args.lr * args.encoder_lr_factor},
                             {"params": head, "lr": args.lr}])


def set_encoder_lr(optimizer, args, epoch):
    """transfer: the pretrained encoder's group (make_optimizer's first) at a zero learning rate
    in epochs 1..--freeze-epochs, at --lr × --encoder-lr-factor after. Freezing = a zero learning
    rate, so Adam's state stays aligned."""
    optimizer.param_groups[0]["lr"] = (0.0 if epoch <= args.freeze_epochs
                                       else args.lr * args.encoder_lr_factor)


def train_epoch(model, optimizer, x, y, loss, args, epoch, generator):
    """One pass over (x, y) in shuffled batches, stepping on `loss`; returns each term's
    per-batch values ({term: (batches,) tensor})."""
    model.train()
    n_batches = common.num_batches(len(x), args.batch_size)
    terms = {}
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, n_batches, f"epoch {epoch}")):
        with common.autocast(args, x.device):
            losses = loss_terms(model, x[idx], y[idx], loss)
        optimizer.zero_grad(set_to_none=True)
        losses[loss].backward()
        optimizer.step()
        for term, value in losses.items():
            # row i of this term's (batches,) record, created at the first batch
            terms.setdefault(term, torch.empty(n_batches, device=x.device))[i] = value.detach()
    return terms


def fit(model, data, args, generator, pretrained_encoder=False):
    """Train this experiment's model for args.epochs, evaluating at epoch 1, every
    args.eval_every epochs and at the last, or until the test loss has not improved for
    --patience evaluations; <run>.ckpt and <run>.pt after every epoch. Returns the Run."""
    (train_x, train_y), (test_x, test_y) = data
    loss, name = EXPERIMENTS[args.experiment].loss, run_name(args)
    optimizer = make_optimizer(model, args, pretrained_encoder)
    run = common.Run(args, Path(args.out_dir) / name, kind(args), {"model": model},
                     {"optimizer": optimizer}, generator)
    for epoch in range(run.done + 1, args.epochs + 1):
        if pretrained_encoder:
            set_encoder_lr(optimizer, args, epoch)
        terms = train_epoch(model, optimizer, train_x, train_y, loss, args, epoch, generator)
        common.check_finite(epoch, run.weights_path, **{loss: terms[loss]})
        if epoch in (1, args.epochs) or epoch % args.eval_every == 0:  # train: the epoch's batch means
            run.log(epoch, {**{f"train_{k}": v.mean().item() for k, v in terms.items()},
                            **{f"test_{k}": v for k, v in evaluate(model, test_x, test_y, loss).items()}})
        run.save(epoch)
        if common.stop_early(run.history, f"test_{loss}", args.patience):
            break
    return run


# ----------------------------------------------------------------------------------------------
# EVALUATION: the numbers the assignments ask for
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, x, y, loss, batch_size=1000):
    """Mean loss (and accuracy) over a split, in eval mode: the batch means weighted by batch size
    and summed in float64."""
    model.eval()
    sizes, means = [], []
    for idx in common.batch_indices(len(x), batch_size, x.device):
        terms = loss_terms(model, x[idx], y[idx], loss)
        sizes.append(len(idx))
        means.append(torch.stack(list(terms.values())))
    per_batch = torch.stack(means).tolist()                      # (batches, terms)
    # each term: Σ_batches (batch size × batch mean) / N, the mean over the split's examples
    return {name: sum(n * row[j] for n, row in zip(sizes, per_batch)) / len(x)
            for j, name in enumerate(terms)}


@torch.no_grad()
def encode_all(encoder, x, batch_size=1000):
    """The codes of a whole split, (N, 1, 28, 28) → (N, d), in eval mode and in batches."""
    encoder.eval()
    return torch.cat([encoder(x[idx]) for idx in common.batch_indices(len(x), batch_size, x.device)])


def latent_spread(codes, labels):
    """How a latent space arranges the classes, in units of its own size (so two encoders whose
    codes differ in scale compare fairly). codes: (N, d); labels: (N,).

    scale   = rms_spread(codes)
    within  = mean_i ‖z_i - c_{y_i}‖ / scale, the mean distance of a code to its class centroid
    between = mean_{a<b} ‖c_a - c_b‖ / scale, the mean distance between two class centroids

    In float64 on the CPU (MPS has no float64): codes and labels are moved there first.
    """
    codes, labels = codes.cpu().double(), labels.cpu()
    scale = rms_spread(codes)
    classes = labels.unique()
    centroids = torch.stack([codes[labels == c].mean(0) for c in classes])     # (C, d)
    own_centroid = centroids[torch.searchsorted(classes, labels)]                # (N, d)
    within = (codes - own_centroid).norm(dim=1).mean() / scale
    pairs = torch.triu_indices(len(classes), len(classes), offset=1)  # (2, C(C-1)/2): each a < b once
    between = (centroids[pairs[0]] - centroids[pairs[1]]).norm(dim=1).mean() / scale
    return {"within_class": within.item(), "between_centroids": between.item(),
            "separation_ratio": (between / within).item()}


def rms_spread(codes):
    """sqrt(mean_i ‖z_i - z̄‖²), the RMS distance of a code (N, d) from the mean code: the size of
    a latent space, in its own units."""
    return (codes - codes.mean(0)).pow(2).sum(1).mean().sqrt()


def compare_latent_spaces(encoders, x, y):
    """E3: each encoder's codes of a split ({name: (N, d)}) and their latent_spread numbers."""
    codes = {name: encode_all(encoder, x) for name, encoder in encoders.items()}
    return codes, {name: latent_spread(c, y) for name, c in codes.items()}


def pca_2d(codes):
    """The codes projected on their first two principal axes: (N, d) → (N, 2). On the CPU: by
    PyTorch version, linalg.svd on MPS is missing, a CPU fallback or a new native kernel, and a
    figure's worth of points costs nothing there."""
    codes = codes.cpu()
    centred = codes - codes.mean(0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    return centred @ directions[:2].T


def code_statistics(codes):
    """Where the test codes lie, against the disc of radius 2 that holds 86% of N(0, I) draws
    (P(‖z‖ ≤ 2) = 1 − e⁻² for a 2-D standard normal)."""
    inside = (codes.norm(dim=1) <= 2.0).float().mean().item()
    return {"code_mean": codes.mean(0).tolist(), "code_std": codes.std(0).tolist(),
            "share_of_test_codes_within_radius_2": inside}


def random_inputs(n, seed, codes=None, distribution="normal"):
    """The decoder inputs of the naive generators, from their own seeded stream: N(0, I), or
    uniform over the box [min, max] of `codes` per neuron."""
    generator = torch.Generator().manual_seed(seed)
    if distribution == "normal":
        return torch.randn(n, 2, generator=generator)
    low, high = codes.min(0).values.cpu(), codes.max(0).values.cpu()
    return low + (high - low) * torch.rand(n, 2, generator=generator)  # (n, 2) in the box


@torch.no_grad()
def generation_quality(decoder, data, args, codes=None, distribution="normal"):
    """cnn.py's sample-quality numbers for as many random inputs as the test set has images."""
    (train_x, _), (test_x, _) = data
    decoder.eval()
    z = random_inputs(len(test_x), args.seed + 3, codes, distribution).to(test_x.device)
    return cnn.sample_quality(decoder(z), test_x, train_x, args)


# ----------------------------------------------------------------------------------------------
# RUNS: names, the weights an experiment builds on, outputs
# ----------------------------------------------------------------------------------------------
def kind(args):
    """The model's identity, which --load and --<name>-weights check: the experiment (and conv's
    --no-fc variant), never a knob, so autoencoder_conv_z16.pt still loads as conv weights."""
    return EXPERIMENTS[args.experiment].run + ("_nofc" if args.no_fc else "")


# the short tags of this script's knobs in a run's name (autoencoder_transfer_freeze300)
TAGS = {"latent_dim": "z", "eval_every": "eval", "naive_distribution": "",
        "freeze_epochs": "freeze", "encoder_lr_factor": "enclr"}
# paths (the runs an experiment builds on, cnn.py's weights) and the flags already in the base
NOT_KNOBS = ("experiment", "no_fc", "cnn_weights", *(f"{n.replace('-', '_')}_weights" for n in DEPENDENCIES))
TRAINING_KNOBS = ("epochs", "eval_every", "batch_size", "lr", "amp", "patience")  # naive trains nothing


def run_name(args):
    """What this run's files are called: with --load, the loaded file's own name; otherwise the
    experiment's kind plus every knob that differs from that experiment's defaults
    (autoencoder_conv_z16, autoencoder_transfer_freeze300): a quick edit writes beside the
    committed run (common.run_name)."""
    if args.load:
        return Path(args.load).stem
    variant = ["--experiment", args.experiment, *(["--no-fc"] if args.no_fc else [])]
    skip = NOT_KNOBS + (TRAINING_KNOBS if args.experiment == "naive" else ())
    return common.run_name(kind(args), args, vars(parse_args(variant)), TAGS, skip)


def build(model_class, args, data, **kwargs):
    """A model initialised from --seed, whatever was built or loaded before it (each model's
    initial weights depend only on the seed)."""
    torch.manual_seed(args.seed)
    return model_class(**kwargs).to(data[0][0].device)


def train_or_load(model, data, args, pretrained_encoder=False):
    """This experiment's model: its weights from --load, else trained here, shuffled by the
    seed's generator. Returns the Run or LoadedRun (history, seconds, trained_with)."""
    if args.load:
        return common.load_run(args.load, kind(args), {"model": model})
    generator = common.seed_everything(args.seed)
    return fit(model, data, args, generator, pretrained_encoder)


def load_dependency(args, name, models):
    """The weights of experiment `name` that this one builds on, put into `models` ({} to read
    only its history): from --<name>-weights, by default the file in --out-dir that the command
    making them writes (its default run name). Absent: one line with that command. Returns the checkpoint (history, args, ...)."""
    flag, flags = f"--{name}-weights", ["--experiment", name]
    if EXPERIMENTS[name].dataset == "mnist" and args.latent_dim != LATENT_DIM:
        flags += ["--latent-dim", str(args.latent_dim)]  # the code length must match
    path = weights_flag_value(args, name) or Path(args.out_dir) / f"{run_name(parse_args(flags))}.pt"
    command = f"python autoencoder.py {' '.join(flags)} --data-dir {args.data_dir} --out-dir {args.out_dir}"
    common.require_file(path, flag, command)
    checkpoint = common.load_weights(path, EXPERIMENTS[name].run, models, flag)
    print(f"{flag}: loaded {path} ({name}, trained {checkpoint['epoch']} epochs)")
    return checkpoint


def finish(model, data, args, run, **final):
    """Test (and train) numbers of the final model into <run>_metrics.json; returns the block."""
    name, loss = run_name(args), EXPERIMENTS[args.experiment].loss
    (train_x, train_y), (test_x, test_y) = data
    final = {"epochs_trained": run.history[-1]["epoch"],
             **{f"train_{k}": v for k, v in evaluate(model, train_x, train_y, loss).items()},
             **{f"test_{k}": v for k, v in evaluate(model, test_x, test_y, loss).items()}, **final}
    common.save_metrics(Path(args.out_dir) / f"{name}_metrics.json", args, train_x.device,
                        run.seconds, run.history, final, **run.provenance())
    print(f"{name}: " + " | ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float)))
    return final


def loss_figure(args, run, final, title, label="", baseline=None):
    """The optimised loss per epoch, one colour per run, train solid and test dashed. Train is
    the mean of the epoch's batch losses, taken in train mode: the weights still change during
    the epoch, and BatchNorm standardises each batch with its own statistics (normalized's train
    curve ends 9% above its eval-mode number). Test is evaluated after each epoch in eval mode;
    so is the star, the train split after training: `final`'s (and the results table's) train number.
    baseline: (label, history) of another run drawn on the same axis, so that two losses read at
    one scale (classifier-decoder: the conv autoencoder's, which E3 compares); `label` then
    names this run's curves."""
    loss = EXPERIMENTS[args.experiment].loss
    ylabel = {"mse": "mean squared error per pixel", "l1": "mean absolute error per pixel"}[loss]
    runs = [baseline, (label, run.history)] if baseline else [(label, run.history)]
    curves, styles = {}, {}
    for (name, history), colour in zip(runs, ("C0", "C1")):
        suffix = f", {name}" if name else ""
        curves.update(common.epoch_series(history, loss, suffix=suffix))
        styles.update({f"train{suffix}": {"color": colour},
                       f"test{suffix}": {"color": colour, "linestyle": "--"}})
    star = f"train{suffix}, after training"  # this run's: the last in `runs`
    curves[star] = ([final["epochs_trained"]], [final[f"train_{loss}"]])
    styles[star] = {"color": colour, "marker": "*", "markersize": 12, "linestyle": "none"}
    common.plot_curves(Path(args.out_dir) / f"{run_name(args)}_loss.png", curves,
                       xlabel="epoch", ylabel=ylabel, title=title, styles=styles,
                       caption="train: the mean of the epoch's batch losses in train mode (weights "
                               "still changing; BatchNorm, where there is one, on each batch's "
                               "statistics); test and ★: evaluated in eval mode")


@torch.no_grad()
def reconstruction_figure(model, x, args, title):
    """10 random test images (seeded) above their decodings."""
    model.eval()
    chosen = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:N_GENERATED]
    images = x[chosen.to(x.device)]
    common.plot_image_rows(Path(args.out_dir) / f"{run_name(args)}_reconstructions.png",
                           {"test image": images, "decoded": model(images)}, title=title)


# ----------------------------------------------------------------------------------------------
# EXPERIMENTS, assignment B
# ----------------------------------------------------------------------------------------------
def run_fc(args, data, normalize=False):
    """Assignment B 1 (and 2.2's model): train (or --load) the fc autoencoder; its loss and reconstruction figures
    and its metrics (normalized's with the sample quality of its decoder fed N(0, I))."""
    model = build(FCAutoencoder, args, data, normalize=normalize)
    run = train_or_load(model, data, args)
    codes = encode_all(model.encoder, data[1][0])
    quality = generation_quality(model.decoder, data, args) if normalize else {}
    final = finish(model, data, args, run, code_mean=codes.mean(0).tolist(),
                   code_std=codes.std(0).tolist(), **quality)
    name = "normalized-bottleneck" if normalize else "fully connected"
    loss_figure(args, run, final, f"{name} autoencoder (2-neuron bottleneck), Fashion-MNIST")
    reconstruction_figure(model, data[1][0], args,
                          f"{name} autoencoder: 10 random test images and their decodings")
    return model


@torch.no_grad()
def run_naive(args, data):
    """Assignment B 2.1: the fc decoder fed random numbers (trains nothing); its test codes drawn
    with the region the draws come from."""
    model = build(FCAutoencoder, args, data)
    load_dependency(args, "fc", {"model": model})
    model.eval()
    (train_x, _), (test_x, test_y) = data
    codes = encode_all(model.encoder, test_x)
    box = encode_all(model.encoder, train_x) if args.naive_distribution == "uniform-box" else None
    draws = random_inputs(N_GENERATED, args.seed + 1, box, args.naive_distribution)
    region = random_inputs(2000, args.seed + 2, box, args.naive_distribution)
    out, name = Path(args.out_dir), run_name(args)
    where = "z ~ N(0, I)" if args.naive_distribution == "normal" else "z ~ U(box of training codes)"
    common.plot_image_rows(out / f"{name}_samples.png",
                           {where: model.decoder(draws.to(test_x.device))},
                           title=f"fc decoder fed 10 random inputs ({where})")
    common.plot_scatter(out / f"{name}_codes.png", {"": codes}, test_y,
                        common.class_names("fashion-mnist"),
                        title="fc autoencoder: test codes and the random inputs",
                        overlays={f"2000 draws {where}": region, "the 10 decoded draws": draws})
    final = {"distribution": args.naive_distribution, "draws": draws.tolist(),
             **code_statistics(codes),
             **generation_quality(model.decoder, data, args, box, args.naive_distribution)}
    common.save_metrics(out / f"{name}_metrics.json", args, test_x.device, 0.0, [], final)


def run_normalized(args, data):
    """Assignment B 2.2-2.3: the normalised bottleneck, and the answer to "are they different":
    the same draws through both decoders, the test codes of both autoencoders."""
    naive = build(FCAutoencoder, args, data)
    load_dependency(args, "fc", {"model": naive})
    model = run_fc(args, data, normalize=True)
    naive.eval()
    model.eval()
    test_x, test_y = data[1]
    draws = random_inputs(N_GENERATED, args.seed + 1).to(test_x.device)  # the same as naive's
    region = random_inputs(2000, args.seed + 2)
    out, name = Path(args.out_dir), run_name(args)
    with torch.no_grad():
        common.plot_image_rows(out / f"{name}_samples.png",
                               {"fc decoder": naive.decoder(draws),
                                "normalized\ndecoder": model.decoder(draws)},
                               title="the same 10 draws z ~ N(0, I) through both decoders")
    panels, stats = {}, {}
    for label, autoencoder in (("fc (unconstrained codes)", naive),
                               ("normalized (BatchNorm, affine=False)", model)):
        panels[label] = encode_all(autoencoder.encoder, test_x)
        stats[label.split()[0]] = code_statistics(panels[label])
    common.plot_scatter(out / f"{name}_codes.png", panels, test_y,
                        common.class_names("fashion-mnist"),
                        title="test codes of both autoencoders, and where N(0, I) draws land",
                        overlays={"2000 draws z ~ N(0, I)": region, "the 10 decoded draws": draws})
    common.write_json(out / f"{name}_codes.json", stats)


# ----------------------------------------------------------------------------------------------
# EXPERIMENTS, assignment E
# ----------------------------------------------------------------------------------------------
def run_conv(args, data):
    """Task 1: the conv autoencoder (the FC variant is the one classifier-decoder and transfer
    build on; --no-fc writes files of its own)."""
    fc = not args.no_fc
    model = build(ConvAutoencoder, args, data, latent_dim=args.latent_dim, fc=fc)
    run = train_or_load(model, data, args)
    final = finish(model, data, args, run)
    how = "FC layer" if fc else "strided convs, no FC"
    loss_figure(args, run, final, f"conv autoencoder, d = {args.latent_dim} ({how}), MNIST")
    reconstruction_figure(model, data[1][0], args,
                          f"conv autoencoder (d = {args.latent_dim}, {how}): test digits and decodings")


def run_classifier(args, data, initial_encoder=None):
    """Tasks 2, 4, 5: the encoder + MLP classifier on all labels, or (few-labels, transfer) on
    the first 100 only; transfer's encoder starts from `initial_encoder`."""
    (train_x, train_y), test = data
    if args.experiment in ("few-labels", "transfer"):
        data = ((train_x[:N_LABELLED], train_y[:N_LABELLED]), test)
    model = build(Classifier, args, data, latent_dim=args.latent_dim)
    if initial_encoder is not None:
        model.encoder.load_state_dict(initial_encoder.state_dict())
    run = train_or_load(model, data, args, pretrained_encoder=initial_encoder is not None)
    common.plot_panels(Path(args.out_dir) / f"{run_name(args)}_curves.png",
                       {"cross-entropy": common.epoch_series(run.history, "ce"),
                        "accuracy": common.epoch_series(run.history, "acc")},
                       xlabel="epoch", title=f"{args.experiment}: encoder + MLP classifier on "
                                             f"{len(data[0][0])} labelled MNIST digits")
    finish(model, data, args, run, labelled_examples=len(data[0][0]))
    return run


def run_classifier_decoder(args, data):
    """Task 3: decode the frozen classifier encoder's codes; compare with the autoencoder's: the
    two losses on one axis (conv's from its weights file's history), the two latent spaces."""
    autoencoder = build(ConvAutoencoder, args, data, latent_dim=args.latent_dim)
    conv = load_dependency(args, "conv", {"model": autoencoder})  # its weights and its history
    model = build(ConvAutoencoder, args, data, latent_dim=args.latent_dim)
    if not args.load:  # (a --load file holds the frozen encoder too)
        classifier = build(Classifier, args, data, latent_dim=args.latent_dim)
        load_dependency(args, "classifier", {"model": classifier})
        model.encoder.load_state_dict(classifier.encoder.state_dict())
        model.encoder.requires_grad_(False)  # fixed: only the decoder trains
    run = train_or_load(model, data, args)
    test_x, test_y = data[1]
    out, name = Path(args.out_dir), run_name(args)
    with torch.no_grad():
        autoencoder.eval()
        model.eval()
        digits = test_x[:60]
        common.plot_image_rows(out / f"{name}_digits.png",
                               {"test digits": digits, "conv\nautoencoder": autoencoder(digits),
                                "classifier\nencoder +\ndecoder": model(digits)},
                               title="60 test digits: originals, autoencoder, classifier encoding",
                               nrow=20)
    latents, spread = compare_latent_spaces({"conv autoencoder": autoencoder.encoder,
                                             "classifier encoder": model.encoder}, test_x, test_y)
    # the two spreads differ ~20x: shared axes would shrink the autoencoder's codes to a dot, so
    # each panel keeps its own scale and its title says how big that space is
    common.plot_scatter(out / f"{name}_latent_pca.png",
                        {f"{encoder} (RMS spread {rms_spread(latents[encoder].cpu()):.1f})\n"
                         f"within {s['within_class']:.2f}, between {s['between_centroids']:.2f} "
                         f"(in units of its spread)": pca_2d(latents[encoder])
                         for encoder, s in spread.items()},
                        test_y, common.class_names("mnist"),
                        title=f"test codes (d = {args.latent_dim}) on their first two principal "
                              f"axes, each panel on its own scale",
                        xlabel="PC 1", ylabel="PC 2")
    autoencoder_l1 = evaluate(autoencoder, test_x, test_y, "l1")["l1"]
    final = finish(model, data, args, run, autoencoder_test_l1=autoencoder_l1, latent_spread=spread)
    loss_figure(args, run, final, f"reconstruction L1 (d = {args.latent_dim}): the conv autoencoder vs "
                                  f"a decoder on the frozen classifier encoder",
                label="classifier encoder", baseline=("conv autoencoder", conv["history"]))


def run_transfer(args, data):
    """Task 5 against task 4: the conv autoencoder's encoder as the starting point."""
    encoder = None
    if not args.load:  # (a --load file holds the trained encoder)
        autoencoder = build(ConvAutoencoder, args, data, latent_dim=args.latent_dim)
        load_dependency(args, "conv", {"model": autoencoder})
        encoder = autoencoder.encoder
    scratch = load_dependency(args, "few-labels", {})  # its history, for the comparison figure
    transfer = run_classifier(args, data, initial_encoder=encoder)
    panels, styles = {"cross-entropy": {}, "accuracy": {}}, {}
    for (label, history), colour in ((("from scratch", scratch["history"]), "C0"),
                                     (("transfer", transfer.history), "C1")):
        panels["cross-entropy"].update(common.epoch_series(history, "ce", suffix=f", {label}"))
        panels["accuracy"].update(common.epoch_series(history, "acc", suffix=f", {label}"))
        styles.update({f"train, {label}": {"color": colour},
                       f"test, {label}": {"color": colour, "linestyle": "--"}})
    common.plot_panels(Path(args.out_dir) / f"{run_name(args)}_vs_few_labels.png", panels,
                       xlabel="epoch (one pass over the 100 labelled digits)", markers=False,
                       styles=styles, legend_below=True,
                       title="100 labelled MNIST digits: encoder from the autoencoder vs from scratch")


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    common.out_dir(args)
    data = common.load_mnist_like(EXPERIMENTS[args.experiment].dataset, args.data_dir, device,
                                  args.limit)
    run = {"fc": run_fc, "naive": run_naive, "normalized": run_normalized, "conv": run_conv,
           "classifier": run_classifier, "classifier-decoder": run_classifier_decoder,
           "few-labels": run_classifier, "transfer": run_transfer}[args.experiment]
    run(args, data)


if __name__ == "__main__":
    common.run_main(main)
