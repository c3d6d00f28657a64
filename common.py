"""Plumbing shared by every script: flags, device and seed, data, batching, checkpoints, metrics, plots.

Nothing here knows about a model or a loss; those live in the script that uses them, so each
script reads on its own. What is here is what every script needs in exactly the same way.

Sections: errors and flags · device and seed · data · training helpers · checkpoints and metrics ·
figures.
"""
import argparse
import json
import math
import os
import random
import sys
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display is needed (or present on servers)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from tqdm import tqdm  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Errors and flags
# ----------------------------------------------------------------------------------------------
def fail(message):
    """Stop with a one-line error (exit status 1), no traceback: for user mistakes, not bugs."""
    raise SystemExit(f"{Path(sys.argv[0]).name}: error: {message}")


def _number(kind, check, requirement):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    noun = "an integer" if kind is int else "a number"
    return parse


positive_int = _number(int, lambda v: v > 0, "> 0")
nonnegative_int = _number(int, lambda v: v >= 0, ">= 0")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "> 0")
nonnegative_float = _number(float, lambda v: v >= 0 and math.isfinite(v), ">= 0")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line instead of argparse's usage block: the mistake, and where help is."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number_list(kind, check, requirement):
    """A comma-separated list type, e.g. `--sweep-kl 1,0.5,0.25`; every entry is checked."""
    one = _number(kind, check, requirement)

    def parse(text):
        values = [one(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values

    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is one: a None default means the help text itself
    says what is used (e.g. "default 2 for fc, 32 for conv"), and a switch is off unless given."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def make_parser(description):
    """An argparse parser whose --help shows every default and whose errors are one line."""
    return _Parser(description=description, formatter_class=_HelpFormatter)


def add_common_args(parser, *, epochs, batch_size, lr, patience=0, epochs_flag=True,
                    data_help="dataset root; downloaded there by torchvision when absent"):
    """The flags every script shares (../shared/CONVENTIONS.md), with per-script defaults.
    epochs_flag=False leaves out --epochs, for a script that counts iterations instead."""
    g = parser.add_argument_group("common options")
    if epochs_flag:
        g.add_argument("--epochs", type=positive_int, default=epochs,
                       help="training epochs" if epochs else "training epochs (default: per experiment)")
    g.add_argument("--batch-size", type=positive_int, default=batch_size, help="minibatch size")
    g.add_argument("--lr", type=positive_float, default=lr,
                   help="learning rate (the peak, where a schedule is used)" if lr
                   else "learning rate (default: per model)")
    g.add_argument("--seed", type=int, default=0, help="seed for python and torch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto picks cuda, then mps, then cpu")
    g.add_argument("--data-dir", default="data", help=data_help)
    g.add_argument("--out-dir", default="figures", help="where figures, weights and metrics go")
    g.add_argument("--load", metavar="PATH",
                   help="skip training: load these weights and redo the figures and metrics")
    g.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of this run in --out-dir")
    g.add_argument("--patience", type=nonnegative_int, default=patience,
                   help="stop when the test loss has not improved for this many evaluations "
                        "(0 = train all epochs)")
    g.add_argument("--limit", type=positive_int,
                   help="use only the first N training and N test examples")
    return g


def use_run_args(args, checkpoint, names, path):
    """For --load: take the flags in `names` (architecture, data selection) from the run that
    wrote `checkpoint`, saying which ones differ from the command line, so the figures and
    numbers are that run's whatever the flags say now."""
    for name in names:
        if getattr(args, name) != checkpoint["args"][name]:
            print(f"--{name.replace('_', '-')} {checkpoint['args'][name]} as in {path}")
            setattr(args, name, checkpoint["args"][name])


def check_common_args(parser, args):
    """Refuse flag combinations argparse cannot express alone."""
    if args.load and args.resume:
        parser.error("--load and --resume exclude each other: --load skips training")


# ----------------------------------------------------------------------------------------------
# Device and seed
# ----------------------------------------------------------------------------------------------
def _mps_available():
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name):
    """'auto' → cuda, then mps, then cpu (and says which); an absent device is a one-line error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
        print(f"device: {name} (auto)")
    elif name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    elif name == "mps" and not _mps_available():
        fail("--device mps: no Apple MPS device is available here (use --device cpu or auto)")
    return torch.device(name)


def seed_everything(seed):
    """Seed python and torch; return the CPU generator that drives shuffling and augmentation.

    Keeping shuffling on its own generator makes it independent of how many random numbers the
    model's initialisation drew, and lets --resume restore it exactly.
    """
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def rng_state(generator):
    """Everything --resume needs to continue the same random stream."""
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state, generator):
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Data: MNIST-sized sets live on the device as one tensor; batches are cut by index
# ----------------------------------------------------------------------------------------------
DATASETS = {
    "mnist": (torchvision.datasets.MNIST, "MNIST"),
    "fashion-mnist": (torchvision.datasets.FashionMNIST, "Fashion-MNIST"),
}


def open_dataset(name, data_dir, train):
    """The torchvision dataset, downloaded when absent; offline and absent → a one-line error."""
    cls, title = DATASETS[name]
    try:
        return cls(data_dir, train=train, download=False)
    except RuntimeError:
        pass  # not there yet: download below
    try:
        return cls(data_dir, train=train, download=True)
    except Exception as error:  # no network, proxy refused, bad checksum, disk full ...
        folder = Path(data_dir) / cls.__name__ / "raw"
        files = ", ".join(Path(url).stem for url, _ in cls.resources)
        fail(f"{title} is not in {folder} and could not be downloaded "
             f"({type(error).__name__}); put {files} (or the same names with .gz) in {folder}/")


def load_mnist_like(name, data_dir, device, limit=None):
    """Return ((train_x, train_y), (test_x, test_y)) on `device`, images as floats in [0, 1].

    Shapes: x (N, 1, 28, 28) float32, y (N,) int64. uint8 → float happens once, on the device.
    `limit` keeps the first N examples of each split.
    """
    splits = []
    for train in (True, False):
        dataset = open_dataset(name, data_dir, train)
        images, labels = dataset.data[:limit], dataset.targets[:limit]  # (N, 28, 28) uint8, (N,)
        x = images.to(device).unsqueeze(1).float().div_(255)  # (N, 28, 28) -> (N, 1, 28, 28)
        splits.append((x, labels.to(device)))
    return tuple(splits)


def class_names(name):
    return DATASETS[name][0].classes


def batch_indices(n, batch_size, device, generator=None):
    """Yield index tensors covering range(n) once: shuffled when `generator` is given, else in
    order. The last batch is smaller when batch_size does not divide n (nothing is dropped)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = order.to(device)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def num_batches(n, batch_size):
    return math.ceil(n / batch_size)


# ----------------------------------------------------------------------------------------------
# Training helpers
# ----------------------------------------------------------------------------------------------
def progress(iterable, total, desc):
    """A tqdm bar on an interactive terminal; silent in logs and CI (one summary line instead)."""
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def check_finite(epoch, weights_path=None, **per_batch_losses):
    """Stop the run if any loss term went NaN or infinite, naming epoch, batch and term.

    Each value is a 1-D tensor of one loss term per batch, kept on the device so that training
    never waits for the GPU to check a number; this runs once per epoch, before any saving.
    """
    for term, losses in per_batch_losses.items():
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            batch = bad[0].item()
            kept = f"; the last good weights stay in {weights_path}" if weights_path else ""
            fail(f"{term} loss became {losses[batch].item()} at epoch {epoch}, batch {batch + 1}"
                 f" — stopping{kept}")


def patience_exhausted(test_losses, patience):
    """True when the last `patience` evaluations did not improve on the best one before them."""
    if patience == 0 or len(test_losses) <= patience:
        return False
    return min(test_losses[-patience:]) >= min(test_losses[:-patience])


def cosine_lr(peak, step, total_steps, warmup_steps=0):
    """Linear warm-up to `peak`, then cosine decay to 0 at `total_steps` (Loshchilov & Hutter,
    SGDR, 2017, without restarts). A function of the step alone, so --resume needs no state."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    fraction = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def log_epoch(history, epochs, patience, loss_key="test_loss", unit="epoch"):
    """Print the summary line of the record just appended to `history` (counted in `unit`s:
    epochs, or iterations for the LSTM); return True when --patience says stop (the test loss
    `loss_key` has not improved for `patience` evaluations)."""
    record = history[-1]
    print(summary_line(record[unit], epochs, record["seconds"], unit=unit,
                       **{k: v for k, v in record.items() if k not in (unit, "seconds")}),
          flush=True)  # progress reaches a log file as it happens
    losses = [r[loss_key] for r in history if loss_key in r]
    if loss_key in record and patience_exhausted(losses, patience):
        print(f"stopping: the test loss has not improved for {patience} evaluations")
        return True
    return False


def summary_line(epoch, epochs, seconds, unit="epoch", **values):
    """`epoch 3/50 | train loss 0.312 | test acc 0.912 | 4.2 s` (None values are left out)."""
    parts = [f"{unit} {epoch}/{epochs}"]
    for key, value in values.items():
        if value is not None:
            parts.append(f"{key.replace('_', ' ')} {value:.4g}")
    return " | ".join(parts + [f"{seconds:.1f} s"])


# ----------------------------------------------------------------------------------------------
# Checkpoints and metrics
# ----------------------------------------------------------------------------------------------
def out_dir(args):
    path = Path(args.out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path, write):
    """Write through a temporary file in the same folder, then rename: a run killed at any moment
    leaves the previous file intact and loadable."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path, kind, **payload):
    """One dict: `kind` (which script and variant wrote it) plus model/optimizer states, args,
    epoch, history, ... Loadable with weights_only=True: tensors, numbers, strings, lists, dicts."""
    _atomic_write(path, lambda tmp: torch.save({"kind": kind, **payload}, tmp))


def load_checkpoint(path, kind):
    """Load a checkpoint written by save_checkpoint for `kind`; anything else is a one-line error."""
    path = Path(path)
    if not path.is_file():
        fail(f"no weights file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fail(f"{path} is not a weights file torch can load safely ({reason[:120]})")
    if not isinstance(checkpoint, dict) or "kind" not in checkpoint:
        fail(f"{path} is not a checkpoint written by this repository (expected {kind!r} weights)")
    if checkpoint["kind"] != kind:
        fail(f"{path} holds {checkpoint['kind']!r} weights, expected {kind!r}")
    return checkpoint


def load_resume_checkpoint(path, kind):
    """The checkpoint --resume continues from: this run's own file in --out-dir."""
    if not Path(path).is_file():
        fail(f"--resume: no checkpoint at {path} to continue from (run once without --resume)")
    return load_checkpoint(path, kind)


def load_state(module, state, path, what):
    """load_state_dict with a one-line error when the weights come from another architecture."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        fail(f"the weights in {path} do not fit {what}: {detail[:200]}")


def save_run(path, kind, args, epoch, history, seconds, generator, models, optimizers, **extra):
    """The checkpoint of a training run after `epoch`: everything --load and --resume need.
    models / optimizers: {name: module or optimizer}, e.g. {"generator": G, "discriminator": D};
    extra: anything else a figure needs again after --load (e.g. samples saved during training)."""
    save_checkpoint(path, kind, args=vars(args), epoch=epoch, history=history, seconds=seconds,
                    rng=rng_state(generator),
                    models={name: m.state_dict() for name, m in models.items()},
                    optimizers={name: o.state_dict() for name, o in optimizers.items()}, **extra)


def restore_run(checkpoint, path, models, optimizers=(), generator=None):
    """Put a save_run checkpoint back into `models` (and, for --resume, `optimizers` and the
    random streams). Returns (history, wall seconds so far, last finished epoch)."""
    for name, module in models.items():
        load_state(module, checkpoint["models"][name], path, f"the {checkpoint['kind']!r} {name}")
    for name, optimizer in dict(optimizers).items():
        optimizer.load_state_dict(checkpoint["optimizers"][name])
    if generator is not None:
        restore_rng_state(checkpoint["rng"], generator)
    return checkpoint["history"], checkpoint["seconds"], checkpoint["epoch"]


def frechet_distance(features_a, features_b):
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D):

        d² = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)      (Dowson & Landau 1982; FID, Heusel et al. 2017)

    Tr((Σa Σb)^½) is the sum of the square roots of the eigenvalues of Σa^½ Σb Σa^½, a symmetric
    positive semi-definite matrix with the same eigenvalues, so two symmetric eigendecompositions
    replace a general matrix square root. Float64 throughout; tiny negative eigenvalues from
    rounding are clipped to 0.
    """
    a, b = features_a.double(), features_b.double()
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))  # (D, D)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).pow(2).sum()
    return (mean_term + cov_a.trace() + cov_b.trace() - 2 * cross).item()


def save_metrics(path, args, device, seconds, history, final, **extra):
    """The run's JSON record: args, device, wall seconds, one record per evaluation, final block."""
    write_json(path, {"args": vars(args), "device": str(device), "wall_seconds": round(seconds, 2),
                      "history": history, "final": final, **extra})


def write_json(path, record):
    text = json.dumps(record, indent=2, default=str) + "\n"
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class Timer:
    """Wall-clock seconds that stay honest on a GPU (waits for queued kernels before reading)."""

    def __init__(self, device):
        self.device = device
        self.start = time.perf_counter()

    def seconds(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------------------------------
# Figures: one function per kind of plot, each writes one PNG and closes it
# ----------------------------------------------------------------------------------------------
def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def plot_panels(path, panels, xlabel, title, markers=True, ncols=None):
    """panels: {ylabel: {label: (xs, ys)}}, one axis per entry side by side (e.g. reconstruction
    and KL, whose scales differ), or `ncols` to a row; a legend on every axis with two or more
    curves."""
    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, (ylabel, curves) in zip(axes.flat, panels.items()):
        for label, (xs, ys) in curves.items():
            ax.plot(xs, ys, marker="o" if markers else None, markersize=3, label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend()
    fig.suptitle(textwrap.fill(title, 55 * ncols))  # ~55 characters fit above one panel
    _save(fig, path)


def epoch_series(history, key, prefixes=("train", "test"), suffix=""):
    """{"train": (epochs, values), "test": (...)} of `key` from a run's history records (which hold
    e.g. train_recon and test_recon), ready for plot_curves / plot_panels; `suffix` is appended
    to each label when two runs share one axis."""
    epochs = [r["epoch"] for r in history]
    return {f"{p}{suffix}": (epochs, [r[f"{p}_{key}"] for r in history]) for p in prefixes}


def plot_curves(path, curves, xlabel, ylabel, title, markers=True):
    """curves: {label: (xs, ys)} drawn on one axis, with a legend when there are two or more."""
    plot_panels(path, {ylabel: curves}, xlabel, title, markers)


def plot_image_rows(path, rows, title, nrow=None):
    """rows: {label: (N, C, H, W) images in [0, 1]}; each entry is one block of rows (nrow images
    per row, default all N in one), labelled on the left: samples per epoch, per KL weight, ..."""
    grids = [torchvision.utils.make_grid(images.detach().float().cpu().clamp(0, 1),
                                         nrow=nrow or len(images), padding=2, pad_value=1.0)
             for images in rows.values()]  # each (3, H', W')
    width = max(g.shape[2] for g in grids)
    height = sum(g.shape[1] for g in grids)
    label_room = 1.6 if any(rows) else 0.0
    fig = plt.figure(figsize=(max(width / 36 + label_room, 6.0), height / 36 + 0.6))
    fig.suptitle(title)
    spec = fig.add_gridspec(len(grids), 1, height_ratios=[g.shape[1] for g in grids])
    for i, (label, grid) in enumerate(zip(rows, grids)):
        ax = fig.add_subplot(spec[i])
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        for side in ax.spines.values():
            side.set_visible(False)
    _save(fig, path)


def plot_scatter(path, points, labels, names, title, xlabel="z₁", ylabel="z₂", overlays=None):
    """points: (N, 2); labels: (N,) class indices coloured by `names` (a legend entry each);
    overlays: at most two {label: (M, 2) points}, e.g. where random inputs come from (drawn
    under the classes as faint dots) and the inputs actually used (black crosses on top)."""
    plot_scatter_panels(path, {"": points}, labels, names, title, xlabel, ylabel, overlays)


def plot_scatter_panels(path, panels, labels, names, title, xlabel="z₁", ylabel="z₂",
                        overlays=None):
    """panels: {panel title: (N, 2) points}, side by side, all coloured by the same `labels`."""
    labels = labels.detach().cpu()
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, (panel, points) in zip(axes[0], panels.items()):
        points = points.detach().float().cpu()
        for c, name in enumerate(names):
            chosen = labels == c
            ax.scatter(points[chosen, 0], points[chosen, 1], s=3, alpha=0.5,
                       color=colours(c % 10), label=name)
        # the first overlay lies under the classes (a region), the second on top (chosen points)
        for (label, extra), style in zip((overlays or {}).items(),
                                         ({"s": 1, "color": "black", "alpha": 0.25, "zorder": 0},
                                          {"s": 60, "color": "black", "marker": "x", "zorder": 3})):
            extra = extra.detach().float().cpu()
            ax.scatter(extra[:, 0], extra[:, 1], label=label, **style)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=panel)
        legend = ax.legend(fontsize="x-small", loc="best")
        for handle in legend.legend_handles:  # every entry the same readable size
            handle.set_sizes([20])
            handle.set_alpha(1)
    fig.suptitle(title)
    _save(fig, path)


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
    _save(fig, path)


def plot_bars(path, values, ylabel, title, ylim=None):
    """values: {label: number}, one labelled bar each (e.g. test accuracy per model)."""
    fig, ax = plt.subplots(figsize=(1.6 * len(values) + 2, 4))
    bars = ax.bar(list(values), list(values.values()), color=plt.get_cmap("tab10").colors[:len(values)])
    ax.bar_label(bars, fmt="%.4f")
    ax.set(ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.tick_params(axis="x", labelsize="small")
    _save(fig, path)
