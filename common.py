"""Plumbing shared by the scripts: flags, device and seed, data, the run bookkeeping, checkpoints,
metrics, plots.

Nothing here knows about a model, a loss or a metric; those live in the script that uses them, so
each script reads on its own. What is here is what two or more scripts need in exactly the same
way: the pieces of a training loop's bookkeeping (`Run` starts or resumes a run, logs a record
and saves the two files; `check_finite` and `stop_early` are the other two calls a loop makes),
and `run_name`, which names a run after the knobs that differ from the defaults. And, as the
design puts every file format here, the data readers: MNIST-sized sets, tweet files of every
common layout (lstm_tweets.py) and Galaxy Zoo JPEGs with their label files (galaxy_vae.py), so
that a script's file is for its idea.

Sections: errors and flags · device and seed · data (MNIST-sized sets, tweet files, galaxy images)
· the training run · checkpoints and metrics · figures.
"""
import argparse
import concurrent.futures
import contextlib
import csv
import hashlib
import json
import math
import os
import platform
import random
import re
import struct
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display is needed (or present on servers)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402
from PIL import Image  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Errors and flags
# ----------------------------------------------------------------------------------------------
def fail(message):
    """Stop with a one-line error (exit status 1), no traceback: for user mistakes, not bugs."""
    raise SystemExit(f"{Path(sys.argv[0]).name}: error: {message}")


OUT_OF_MEMORY = ("out of memory: a size flag (--batch-size, a layer or latent size, --limit) asks "
                 "for more than this machine holds; use smaller values")


def run_main(main, argv=None):
    """Call a script's main(argv). A size the machine cannot hold (a huge --batch-size,
    --latent-dim, --hidden ...) or a number beyond float32 ends in one line naming the cause
    instead of a traceback."""
    try:
        return main(argv)
    except (MemoryError, torch.OutOfMemoryError):
        fail(OUT_OF_MEMORY)
    except (RuntimeError, TypeError) as error:
        text = str(error).lower()
        if any(sign in text for sign in ("not enough memory", "can't allocate memory",
                                         "out of memory", "overflow when unpacking long")):
            fail(OUT_OF_MEMORY)
        if "cannot be converted to type float without overflow" in text:
            fail("a number on the command line (--lr?) is beyond what float32 holds (3.4e38)")
        raise


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
fraction = _number(float, lambda v: 0 <= v < 1, ">= 0 and < 1")  # a dropout rate, a held-out share


def number_list(number):
    """A comma-separated list type for the sweeps, e.g. `--sweep-kl 1,0.5,0.25`; each entry goes
    through `number` (nonnegative_float, positive_int) and appears once."""

    def parse(text):
        values = [number(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if len(set(values)) < len(values):
            raise argparse.ArgumentTypeError(f"lists a value twice: {text}")
        return values

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line instead of argparse's usage block: the mistake, and where help is."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is one: a None default means the help text itself
    says what is used (e.g. "default 2 for fc, 32 for conv"), and a switch is off unless given."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def make_parser(description):
    """An argparse parser whose --help shows every default and whose errors are one line. Flags
    are spelled in full: an abbreviation that works today would change meaning or break when a
    flag sharing its prefix is added."""
    return _Parser(description=description, formatter_class=_HelpFormatter, allow_abbrev=False)


LOAD_HELP = ("skip training: load this weights file (<run>.pt or the <run>.ckpt checkpoint) and "
             "redo the figures and metrics of its run on the data given now")


def add_common_args(parser, *, epochs, batch_size, lr, patience=0, epochs_flag=True,
                    data_help="dataset root; downloaded there by torchvision when absent",
                    load_help=LOAD_HELP):
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
    g.add_argument("--load", nargs="+", metavar="FILE", help=load_help)
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue the run in --out-dir from its checkpoint (<run>.ckpt); without "
                        "one, stop with an error (never a silent fresh start). Given a CKPT, "
                        "continue that checkpoint under this command's run name: e.g. "
                        "--epochs 200 --resume figures/<run>_e100.ckpt extends a 100-epoch run")
    g.add_argument("--deterministic", action="store_true",
                   help="cuda: deterministic cuDNN and cuBLAS kernels, so the same seed repeats a "
                        "run bit for bit (slower; CPU runs repeat without it)")
    g.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the forward pass and the loss (weights and optimizer "
                        "stay fp32): cuda, or a cpu with bf16 units (AVX-512 BF16, AMX); refused "
                        "for training on any other cpu, where it is 25-50x slower")
    g.add_argument("--patience", type=nonnegative_int, default=patience,
                   help="stop when the test loss has not improved for this many evaluations "
                        "(0 = train all epochs)")
    g.add_argument("--limit", type=positive_int,
                   help="use only the first N training and N test examples")
    return g


def check_common_args(parser, args, load_files=1, sweep=False):
    """Refuse flag combinations argparse cannot express alone. `load_files`: how many weights
    files --load takes in this command (one per model it trains); with one, args.load becomes
    that one path, unless the command is a `sweep` (which indexes its members' files)."""
    if args.load and args.resume:
        parser.error("--load and --resume exclude each other: --load skips training")
    if args.amp and args.device == "mps":
        parser.error("--amp is bf16 autocast on cpu and cuda; MPS runs without it")
    if args.load and len(args.load) != load_files:
        parser.error(f"--load takes {load_files} weights file{'s' * (load_files > 1)} here "
                     f"(one per model this command trains), got {len(args.load)}")
    if args.load and load_files == 1 and not sweep:
        args.load = args.load[0]


def use_run_args(args, checkpoint, names, path):
    """For --load: take the flags in `names` (architecture, data selection) from the run that
    wrote `checkpoint`, saying which ones differ from the command line, so the figures and
    numbers are that run's whatever the flags say now. A flag the run did not record (it came
    later) keeps the command line's value."""
    for name in names:
        if name in checkpoint["args"] and getattr(args, name) != checkpoint["args"][name]:
            print(f"--{name.replace('_', '-')} {checkpoint['args'][name]} as in {path}")
            setattr(args, name, checkpoint["args"][name])


def autocast(args, device):
    """The context of a forward pass and its loss: bf16 autocast with --amp (matrix products and
    convolutions in bfloat16, losses and reductions kept in float32 by autocast's own op lists;
    the weights and the optimizer stay float32), nothing otherwise."""
    if not args.amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Device and seed
# ----------------------------------------------------------------------------------------------
def _mps_available():
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name, deterministic=False):
    """'auto' → cuda, then mps, then cpu; an absent device is a one-line error. Prints the run's
    first log line: the Python, torch, torchvision and platform versions and the device.

    deterministic (--deterministic): on CUDA, the settings that make a run repeat bit for bit:
    cuDNN's deterministic algorithms without autotuning, torch.use_deterministic_algorithms (an
    op with no deterministic kernel then raises instead of varying), and the cuBLAS workspace
    setting it requires. On the CPU the same seed repeats a run without them; MPS offers no such
    guarantee.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    elif name == "mps" and not _mps_available():
        fail("--device mps: no Apple MPS device is available here (use --device cpu or auto)")
    if deterministic and name == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    print(" | ".join(f"{k} {v}" for k, v in versions().items()) + f" | device: {name}", flush=True)
    return torch.device(name)


def versions():
    """What the results were made with; every script's first log line, metrics JSON and weights
    file (trained_on) hold it: the software, and the CPU (its name, the instruction set torch's
    kernels use, and whether it computes bf16), since a time, and which --amp runs are possible,
    depend on which CPU made them. Plain strings: torch.load(weights_only=True) refuses torch's
    own version class."""
    import torchvision  # imported here, not at the top: see dataset_class
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "platform": platform.platform(),
            "processor": processor_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": cpu_computes_bf16()}


def processor_name():
    """The CPU's model name where the platform gives it (Linux: /proc/cpuinfo; elsewhere what
    platform.processor() says, e.g. 'arm' on a Mac), else the machine type."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_computes_bf16():
    """Whether this CPU computes bfloat16 in hardware, as oneDNN (the library behind autocast's
    CPU matrix products and convolutions) sees it: x86 with AVX-512 BF16 or AMX, Arm with its
    BF16 extension. Elsewhere (AVX2 only: most laptops, many cloud machines) bf16 is emulated,
    25-50x slower than fp32 in benchmarks/amp.py, and oneDNN has no bf16 LSTM at all.

    oneDNN also answers yes for AVX-512 without BF16 (it emulates bf16 there), so on x86 the
    instructions themselves are asked for as well (torch.cpu has the checks from torch 2.4 on).
    A torch built without oneDNN (some macOS and Arm wheels) has no such check: no."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):  # no mkldnn operators in this build
        return False
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    if x86 and hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return True


def check_amp(args, device):
    """--amp training on a CPU without bf16 units (cpu_computes_bf16() False) stops before any
    work, with one line: autocast would emulate bf16 there, 25-50x slower than fp32, and oneDNN
    has no bf16 LSTM at all. Everything else goes on as asked: cuda and CPUs with bf16 units
    train in bf16 (mps is refused by check_common_args), and --load trains nothing: autocast
    wraps the training steps only, every evaluation runs in fp32 (load_checkpoint says so)."""
    if args.amp and not args.load and device.type == "cpu" and not cpu_computes_bf16():
        fail(f"--amp: this CPU ({processor_name()}, {torch.backends.cpu.get_cpu_capability()}) "
             f"has no bf16 units, so bf16 autocast would be emulated, 25-50x slower than fp32 "
             f"(benchmarks/amp.py); run without --amp")


def seed_everything(seed):
    """Seed python and torch; return the CPU generator that drives shuffling and augmentation.

    Keeping shuffling on its own generator makes it independent of how many random numbers the
    model's initialisation drew, and lets --resume restore it exactly.
    """
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def rng_state(generator):
    """Everything --resume needs to continue the same random stream: the CPU generator that
    shuffles, torch's global CPU stream, and the streams of the GPUs present."""
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if _mps_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(state, generator):
    """Put back what rng_state saved, for the devices this machine has: a checkpoint written with
    more GPUs than are here restores the ones present (one per saved GPU, in order)."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for index, gpu_state in enumerate(state.get("cuda", [])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)
    if "mps" in state and _mps_available():
        torch.mps.set_rng_state(state["mps"])


def to_device(tensor, device):
    """A CPU tensor (noise, indices drawn on the CPU generator) onto `device` without making the
    host wait: on CUDA through pinned memory with a non-blocking copy, so the copy queues behind
    the GPU's work instead of waiting for it; elsewhere a plain copy. The same values either way."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# ----------------------------------------------------------------------------------------------
# Data: MNIST-sized sets live on the device as one tensor; batches are cut by index
# ----------------------------------------------------------------------------------------------
DATASETS = {"mnist": ("MNIST", "MNIST"), "fashion-mnist": ("FashionMNIST", "Fashion-MNIST")}


def dataset_class(name):
    """torchvision's class for `name`. torchvision is imported where it is used, not at the top:
    its import takes ~2 s (it loads every model family), which a --help or a mistyped flag would
    otherwise wait for, as would the test suite's ~80 runs of a script that stop at a flag."""
    import torchvision
    return getattr(torchvision.datasets, DATASETS[name][0])


def idx_file_problem(path):
    """Why an MNIST-format (IDX) file cannot be read, or None when it is whole: the header gives
    the element type and the sizes, so a truncated or foreign file is told from a good one (by
    its header and its size alone) before torchvision fails on it with a message about shapes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * 4)  # magic, then at most four sizes
    if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] != 0x08 or not 1 <= header[3] <= 4:
        return "is not an IDX file of bytes (its header is wrong)"
    ndim = header[3]
    if len(header) < 4 + 4 * ndim:
        return f"is truncated ({size} bytes, shorter than its header)"
    sizes = struct.unpack(f">{ndim}I", header[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(sizes)
    if size != expected:
        return f"is truncated or padded ({size:,} bytes where its header promises {expected:,})"
    return None


def open_dataset(name, data_dir, train):
    """The torchvision dataset, downloaded when absent. Offline and absent, or present but
    damaged, is a one-line error that names the file and what is wrong with it."""
    cls, title = dataset_class(name), DATASETS[name][1]
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        fail(f"--data-dir {root} is a file, not a folder")
    folder = root / cls.__name__ / "raw"
    stems = [Path(url).stem for url, _ in cls.resources]  # e.g. train-images-idx3-ubyte
    if all((folder / stem).is_file() for stem in stems):
        for stem in stems:
            problem = idx_file_problem(folder / stem)
            if problem:
                fail(f"{folder / stem} {problem}: replace it with the original {title} file")
        return cls(data_dir, train=train, download=False)
    try:
        return cls(data_dir, train=train, download=True)
    except Exception as error:  # no network, proxy refused, bad checksum, disk full ...
        files = ", ".join(stems)
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
    return dataset_class(name).classes


def batch_indices(n, batch_size, device, generator=None):
    """Yield index tensors covering range(n) once: shuffled when `generator` is given, else in
    order. The last batch is smaller when batch_size does not divide n (nothing is dropped)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = to_device(order, device)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def random_shift(x, generator, max_shift=2, fill=0.0):
    """Move each image of x (B, 1, H, W) by a random whole number of pixels, up to `max_shift`
    in each direction, the uncovered border filled with `fill` (the background's value). The
    shifts come from `generator` (CPU), for reproducibility, and reach the device through
    to_device, so the step never waits for the copy."""
    B, _, H, W = x.shape
    shifts = to_device(torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator), x.device)
    padded = F.pad(x, [max_shift] * 4, value=fill)                      # (B, 1, H+2s, W+2s)
    rows = shifts[0][:, None] + torch.arange(H, device=x.device)        # (B, H)
    cols = shifts[1][:, None] + torch.arange(W, device=x.device)        # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]             # (B, 1, 1)
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # (B, 1, H, W)


def num_batches(n, batch_size):
    return math.ceil(n / batch_size)


def progress(iterable, total, desc):
    """A tqdm bar on an interactive terminal; silent in logs and CI (one summary line instead)."""
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)


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


# ----------------------------------------------------------------------------------------------
# Data: tweet files (lstm_tweets.py)
# ----------------------------------------------------------------------------------------------
# Every line of a tweet file is read on its own, so an unbalanced quote inside a tweet can never
# swallow the lines after it; every line becomes one tweet or a counted, reported problem. The
# layouts, detected and said when read: text and label with a header (either order: the names tell
# which is which); two columns without a header (the label column is the one holding labels);
# Sentiment140's six columns target,id,date,flag,user,text (labels 0/4; its test file's neutral 2s
# are reported and skipped); ItemID,Sentiment,SentimentSource,SentimentText; SemEval-2017 task
# 4A's tab-separated id<TAB>label<TAB>text (neutral rows skipped and counted, literal \uXXXX
# escapes decoded, a stray trailing tab counted). Labels 0/1, 0/4 or negative/positive. UTF-8 with
# or without a byte-order mark, LF or CRLF line ends. A script's --text-column / --label-column
# override the detection (a header name or a 0-based position).
TEXT_NAMES = ("text", "tweet", "sentimenttext", "content", "message")  # header names, by priority
LABEL_NAMES = ("label", "sentiment", "target", "polarity", "class")
LABEL_SCHEMES = {"0/1": {"0": 0, "1": 1}, "0/4": {"0": 0, "4": 1},
                 "negative/positive": {"negative": 0, "positive": 1}}
SHOWN_LINES = 5       # how many line numbers a report names for each kind of problem


@dataclass
class TweetFile:
    """What read_tweet_csv found: the tweets, and an account of every line that is not one."""
    texts: list
    labels: list
    layout: str                                   # which layout was detected, in words
    problems: dict = field(default_factory=dict)  # reason -> line numbers of skipped lines
    split_at_commas: list = field(default_factory=list)  # lines csv could not split (parse_line)
    lines: int = 0                                # lines in the file
    notes: dict = field(default_factory=dict)     # quirk -> line numbers of tweets read despite it
    neutral: list = field(default_factory=list)   # texts of the skipped neutral rows (SemEval)


def normalise(value):
    return value.strip().strip('"').strip().lower()


def parse_line(line, n_columns, text_column):
    """The fields of one line, and whether they had to be cut at the outer commas.

    csv reads the line on its own, so a quote can never reach into the next line. When that gives
    the wrong number of fields (a quote left open inside a tweet, or a comma in an unquoted
    tweet), every column but the text is short and comma-free: the commas before and after the
    text column separate them, and the text is everything in between. Returns None when the
    line has too few commas to hold all columns."""
    fields = next(csv.reader([line]), [])
    if len(fields) == n_columns:
        return fields, False
    parts = line.split(",")
    if len(parts) < n_columns:
        return None
    after = n_columns - text_column - 1
    end = len(parts) - after
    text = ",".join(parts[text_column:end])
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('""', '"')  # a properly quoted field; a lone quote is the tweet's
    return [p.strip('"') for p in parts[:text_column]] + [text] + [p.strip('"') for p in parts[end:]], True


def column_index(choice, header, n_columns, flag):
    """--text-column / --label-column as a position: a 0-based number or a header name."""
    if choice.isdigit():
        if int(choice) >= n_columns:
            fail(f"{flag} {choice}: the file has {n_columns} columns (0 to {n_columns - 1})")
        return int(choice)
    names = [normalise(name) for name in header or []]
    if normalise(choice) not in names:
        fail(f"{flag} {choice!r}: no such column in the header "
                    f"({', '.join(header) if header else 'the file has no header'})")
    return names.index(normalise(choice))


def label_scheme(values):
    """Which label scheme these (normalised) label values follow: 0/1, 0/4 or negative/positive;
    decided by the majority, so a few odd labels are reported instead of changing the scheme."""
    counts = Counter(values)
    words = counts["negative"] + counts["positive"]
    digits = counts["0"] + counts["1"] + counts["4"]
    if words > digits:
        return "negative/positive"
    return "0/4" if counts["4"] > counts["1"] else "0/1"


def detect_layout(rows, text_column=None, label_column=None, path=""):
    """(header or None, n_columns, text column, label column, description) from the first rows
    (each a list of fields as csv parsed its line)."""
    n_columns = Counter(len(r) for r in rows).most_common(1)[0][0]
    names = [normalise(v) for v in rows[0]]
    named = [normalise(c) for c in (text_column, label_column) if c and not c.isdigit()]
    known = any(n in TEXT_NAMES + LABEL_NAMES for n in names)
    header = rows[0] if known or (named and all(n in names for n in named)) else None
    data = rows[1:] if header else rows
    if header:
        n_columns = len(header)
        guess_text = next((names.index(n) for n in TEXT_NAMES if n in names), None)
        guess_label = next((names.index(n) for n in LABEL_NAMES if n in names), None)
        shape = f"header {','.join(header)}"
    elif n_columns == 6:
        guess_text, guess_label, shape = 5, 0, "Sentiment140 layout (target,id,date,flag,user,text; no header)"
    elif n_columns == 4:
        guess_text, guess_label, shape = 3, 1, "ItemID,Sentiment,SentimentSource,SentimentText (no header)"
    else:
        valid = set().union(*LABEL_SCHEMES.values())
        looks_like_label = [sum(len(r) == n_columns and normalise(r[c]) in valid for r in data)
                            for c in range(n_columns)]
        guess_label = max(reversed(range(n_columns)), key=lambda c: looks_like_label[c])
        lengths = [sum(len(r[c]) for r in data if len(r) == n_columns) for c in range(n_columns)]
        guess_text = max((c for c in range(n_columns) if c != guess_label), key=lengths.__getitem__,
                         default=None)
        shape = f"{n_columns} columns, no header"
    text = guess_text if text_column is None else column_index(text_column, header, n_columns, "--text-column")
    label = guess_label if label_column is None else column_index(label_column, header, n_columns, "--label-column")
    if text is None or label is None or text == label:
        fail(f"{path}: cannot tell which column holds the tweet and which the label "
                    f"({shape}); name them with --text-column and --label-column")
    return header, n_columns, text, label, f"{shape}: text in column {text}, label in column {label}"


def read_tweet_csv(path, text_column=None, label_column=None):
    """Read one tweet file, whatever its layout (the comment above), line by line: every line
    becomes one tweet or one counted problem (blank line, missing label, label outside the
    scheme, empty tweet). A file with no tweet at all is an error."""
    path = Path(path)
    if not path.exists():
        fail(f"no tweet file at {path}: get Sentiment140 (http://help.sentiment140.com/"
                    "for-students) or the course's tweets_train.csv / tweets_test.csv and pass "
                    "--train-csv and --test-csv (or --data-dir)")
    if path.is_dir():
        fail(f"{path} is a folder, not a tweet file (--train-csv and --test-csv name files)")
    data = path.read_bytes()
    if b"\x00" in data[:4096]:  # text never holds NUL; binary files almost always do
        fail(f"{path} is a binary file, not a text file of tweets")
    text = data.decode("utf-8-sig", errors="replace")  # drops a byte-order mark
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # LF or CRLF
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        fail(f"{path} holds no tweets (it is empty)")
    if looks_like_semeval(numbered[:1000]):
        return read_semeval_tsv(path, numbered, lines)
    first_rows = [next(csv.reader([line]), []) for _, line in numbered[:1000]]
    header, n_columns, text_at, label_at, layout = detect_layout(first_rows, text_column,
                                                                 label_column, path)
    if header:
        numbered = numbered[1:]
    problems = {}
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        problems["blank line"] = blank
    parsed, split_at_commas = [], []
    for n, line in numbered:
        result = parse_line(line, n_columns, text_at)
        if result is None:
            problems.setdefault("missing label (too few columns)", []).append(n)
            continue
        fields, was_split = result
        if was_split:
            split_at_commas.append(n)
        parsed.append((n, fields[text_at], normalise(fields[label_at])))
    scheme = label_scheme([label for _, _, label in parsed])
    mapping = LABEL_SCHEMES[scheme]
    texts, labels, bad_lines, bad_values = [], [], [], Counter()
    for n, tweet, label in parsed:
        if label not in mapping:
            bad_lines.append(n)
            bad_values[label] += 1
        elif not tweet:
            problems.setdefault("empty tweet", []).append(n)
        else:
            texts.append(tweet)
            labels.append(mapping[label])
    if bad_lines:
        seen = ", ".join(f"{value!r} x{count}" for value, count in bad_values.most_common(3))
        problems[f"label not {scheme} ({seen})"] = bad_lines
    if not texts:
        fail(f"{path}: no line holds a tweet with a {scheme} label ({layout})")
    return TweetFile(texts, labels, f"{layout}; labels {scheme}", problems, split_at_commas,
                     len(lines))


SEMEVAL_LABELS = {"negative": 0, "positive": 1}  # "neutral" rows are skipped and counted
ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")  # a literal \u2019 written into the text


def unescape(match):
    return chr(int(match.group(1), 16))


def looks_like_semeval(numbered):
    """SemEval-2017 task 4A's layout: id<TAB>label<TAB>text, no header, labels
    positive/negative/neutral (true of most of the first lines)."""
    rows = [line.split("\t") for _, line in numbered]
    return sum(len(r) >= 3 and normalise(r[1]) in ("positive", "negative", "neutral") for r in rows) > len(rows) / 2


def read_semeval_tsv(path, numbered, lines):
    """Tab-separated tweets as SemEval publishes them, quirks included: no CSV quoting (a double
    quote opening a text is the tweet's own); a stray trailing tab is an empty extra field (the
    tweet is read, the line counted); literal \\uXXXX escapes become the character they name
    (then the script's rule for characters outside ASCII); neutral rows are skipped and counted,
    their texts kept apart (unlabelled text, e.g. for a language model)."""
    texts, labels, problems, notes, neutral = [], [], {}, {}, []
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        problems["blank line"] = blank
    for n, line in numbered:
        fields = line.split("\t")
        if len(fields) < 3:
            problems.setdefault("not id<TAB>label<TAB>text", []).append(n)
            continue
        label, extra = normalise(fields[1]), fields[3:]
        if extra and not any(extra):
            notes.setdefault("a stray trailing tab (an empty extra field)", []).append(n)
        text = "\t".join([fields[2]] + [f for f in extra if f])  # a tab inside a tweet stays
        if label == "neutral":
            problems.setdefault("neutral (a positive/negative classifier skips them)", []).append(n)
            neutral.append(ESCAPE.sub(unescape, text))
            continue
        if label not in SEMEVAL_LABELS:
            problems.setdefault("label not positive/negative/neutral", []).append(n)
            continue
        if ESCAPE.search(text):
            notes.setdefault("literal \\uXXXX escapes, read as the characters they name", []).append(n)
            text = ESCAPE.sub(unescape, text)
        if not text.strip():
            problems.setdefault("empty tweet", []).append(n)
            continue
        texts.append(text)
        labels.append(SEMEVAL_LABELS[label])
    if not texts:
        fail(f"{path}: no line holds a positive or negative tweet (SemEval layout "
                    "id<TAB>label<TAB>text)")
    return TweetFile(texts, labels, "SemEval layout (id<TAB>label<TAB>text, no header); labels "
                     "negative/positive, neutral skipped", problems, [], len(lines), notes, neutral)


def plural(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def line_numbers(numbers):
    more = " ..." if len(numbers) > SHOWN_LINES else ""
    return f"line{'s' if len(numbers) > 1 else ''} " + ", ".join(map(str, numbers[:SHOWN_LINES])) + more


def tweet_file_report(path, tweets):
    """What was read and what was not, in a few lines for the log."""
    lines = [f"{path}: {plural(len(tweets.texts), 'tweet')} from {plural(tweets.lines, 'line')}; "
             f"{tweets.layout}"]
    for reason, numbers in tweets.problems.items():
        lines.append(f"  skipped {plural(len(numbers), 'line')}: {reason} ({line_numbers(numbers)})")
    if tweets.split_at_commas:
        lines.append(f"  {plural(len(tweets.split_at_commas), 'line')} with an unbalanced quote or "
                     f"an unquoted comma, read by cutting at the outer commas "
                     f"({line_numbers(tweets.split_at_commas)})")
    for quirk, numbers in tweets.notes.items():
        lines.append(f"  {plural(len(numbers), 'line')} with {quirk} ({line_numbers(numbers)})")
    return "\n".join(lines)


def read_tweet_files(paths, text_column=None, label_column=None):
    """Tweet files read one by one (read_tweet_csv), each one's report printed as it is read,
    joined in the order given: (texts, labels, neutral texts)."""
    texts, labels, neutral = [], [], []
    for path in paths:
        tweets = read_tweet_csv(path, text_column, label_column)
        print(tweet_file_report(path, tweets))
        texts.extend(tweets.texts)
        labels.extend(tweets.labels)
        neutral.extend(tweets.neutral)
    if len(paths) > 1:
        print(f"  {plural(len(texts), 'tweet')} from {len(paths)} files")
    return texts, labels, neutral


# ----------------------------------------------------------------------------------------------
# Data: galaxy images and labels (galaxy_vae.py)
# ----------------------------------------------------------------------------------------------
# Kaggle's training_solutions_rev1.csv: GalaxyID and the 37 answer probabilities of the Galaxy Zoo
# decision tree (11 questions with 3, 2, 2, 2, 4, 2, 3, 7, 3, 3, 6 answers)
KAGGLE_COLUMNS = ["GalaxyID"] + [f"Class{q}.{a}" for q, answers in
                                 enumerate((3, 2, 2, 2, 4, 2, 3, 7, 3, 3, 6), start=1)
                                 for a in range(1, answers + 1)]
Q1_NAMES = ("smooth", "features or disk", "star or artifact")  # Class1.1, 1.2, 1.3


def warn_skipped(problem, names, action):
    """One counted warning line for a set of bad inputs: never a silent drop."""
    if names:
        first = ", ".join(str(n) for n in names[:5])
        print(f"warning: {len(names)} {problem} (first: {first}{', ...' if len(names) > 5 else ''}); {action}")


def decode_jpeg(task):
    """(path, crop, size) → (RGB bytes of the centre crop resized to size x size, None) or
    (None, the problem). Runs in a worker process; PIL only, no torch."""
    path, crop, size = task
    try:
        with Image.open(path) as image:
            if image.format != "JPEG":
                return None, f"not a JPEG ({image.format})"
            image = image.convert("RGB")  # decodes the whole file: a truncated one fails here
            w, h = image.size
            side = min(crop, w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            return image.tobytes(), None
    except Exception as error:  # PIL raises many types for damaged files
        return None, f"unreadable ({type(error).__name__})"


def decode_all(files, crop, size, workers):
    """Every file through decode_jpeg in `workers` processes, with a progress bar:
    {"ids", "images" uint8 (N, 3, size, size), "problems" ["name: why", ...]}."""
    tasks = [(str(p), crop, size) for p in files]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        decoded = list(progress(pool.map(decode_jpeg, tasks, chunksize=32), len(tasks),
                                       f"decoding {len(tasks)} JPEGs ({workers} workers)"))
    good = [(p.stem, data) for p, (data, _) in zip(files, decoded) if data is not None]
    pixels = bytearray(b"".join(data for _, data in good))
    images = (torch.frombuffer(pixels, dtype=torch.uint8) if pixels else torch.empty(0, dtype=torch.uint8))
    return {"ids": [galaxy for galaxy, _ in good],
            "images": images.view(len(good), size, size, 3).permute(0, 3, 1, 2).contiguous(),
            "problems": [f"{p.name}: {why}" for p, (_, why) in zip(files, decoded) if why]}


def load_images(images_dir, crop, size, cache_dir, workers):
    """All <id>.jpg of images_dir as uint8 (N, 3, size, size) with their ids, decoded once in
    parallel and cached under a key of crop, size and the file list (names and sizes)."""
    folder = Path(images_dir)
    if not folder.is_dir():
        fail(f"--images-dir {folder} is not a folder (expected Kaggle's images_training_rev1 "
                    "with <GalaxyID>.jpg files)")
    entries = sorted(folder.iterdir())
    is_jpeg = [p.suffix.lower() in (".jpg", ".jpeg") and p.is_file() for p in entries]
    files = [p for p, jpeg in zip(entries, is_jpeg) if jpeg]
    warn_skipped(f"entries of {folder} are not .jpg files", [p.name for p, jpeg in zip(entries, is_jpeg) if not jpeg],
                 "ignored")
    if not files:
        fail(f"--images-dir {folder} holds no .jpg file")
    key = hashlib.sha256(f"{crop},{size}\n".encode() + "\n".join(
        f"{p.name}:{p.stat().st_size}" for p in files).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"galaxy_crop{crop}_size{size}_{key}.pt"
    stored = None
    if cache.exists():
        try:
            stored = torch.load(cache, weights_only=True)
            print(f"read {len(stored['ids'])} decoded images from the cache {cache}")
        except Exception as error:
            print(f"warning: the cache {cache} is damaged ({type(error).__name__}); decoding again")
    if stored is None:
        stored = decode_all(files, crop, size, workers)
        if stored["ids"]:  # a folder with nothing readable is an error below, not a cache entry
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                atomic_write(cache, lambda tmp: torch.save(stored, tmp))
                print(f"cached {len(stored['ids'])} decoded images in {cache}")
            except OSError as error:
                print(f"warning: cannot write the cache in {cache_dir} ({error.strerror}); decoding again next run")
    warn_skipped("image files cannot be used", stored["problems"], "left out")
    if not stored["ids"]:
        fail(f"--images-dir {folder}: no readable JPEG among {len(files)} files")
    return stored["images"], stored["ids"]


def read_labels(path, scheme):
    """({GalaxyID: label string, or its 37 probabilities as a tensor}, whether the file is
    Kaggle's 37-column layout), from either layout (told apart by the header)."""
    path = Path(path)
    if not path.is_file():
        fail(f"--labels {path} is not a file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as error:
        fail(f"--labels {path} is not a text CSV file ({type(error).__name__})")
    if not rows:
        fail(f"--labels {path} is empty")
    header, rows = [h.strip() for h in rows[0]], rows[1:]
    kaggle = header == KAGGLE_COLUMNS
    if not kaggle and not (len(header) == 2 and header[0] == "GalaxyID"):
        fail(f"--labels {path}: unknown header {','.join(header)[:80]!r}; expected Kaggle's "
                    "GalaxyID,Class1.1,...,Class11.6 or GalaxyID,<label>")
    print(f"--labels {path}: " + (f"Kaggle's 37 probabilities, class = argmax of "
                                  f"{'all 37' if scheme == 'argmax' else 'question 1'}"
                                  if kaggle else f"one {header[1]!r} label per galaxy"))
    labels, bad = {}, {"rows with the wrong number of fields": [], "rows repeat a GalaxyID": [],
                       "rows hold a value that is not a number": [],
                       "rows hold a probability outside [0, 1]": []}
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            bad["rows with the wrong number of fields"].append(f"line {line}")
            continue
        galaxy = row[0].strip()
        if galaxy in labels:
            bad["rows repeat a GalaxyID"].append(galaxy)
            continue
        if not kaggle:
            labels[galaxy] = row[1].strip()
            continue
        try:
            p = torch.tensor([float(v) for v in row[1:]])
        except ValueError:
            bad["rows hold a value that is not a number"].append(galaxy)
            continue
        if not ((p >= 0) & (p <= 1)).all():
            bad["rows hold a probability outside [0, 1]"].append(galaxy)
            continue
        labels[galaxy] = p
    for problem, names in bad.items():
        warn_skipped(f"{problem} in {path}", names, "skipped")
    if not labels:
        fail(f"--labels {path} holds no usable row")
    return labels, kaggle


def classes_of(labels, kaggle, scheme):
    """Class names, {GalaxyID: class index} and the condition vector of each id."""
    if not kaggle:
        names = sorted(set(labels.values()))
        index = {g: names.index(v) for g, v in labels.items()}
        return names, index, {g: F.one_hot(torch.tensor(i), len(names)).float() for g, i in index.items()}
    if scheme == "q1":
        names = list(Q1_NAMES)
        index = {g: int(p[:3].argmax()) for g, p in labels.items()}
    else:
        present = sorted({int(p.argmax()) for p in labels.values()})
        names = [KAGGLE_COLUMNS[1 + i] for i in present]
        index = {g: present.index(int(p.argmax())) for g, p in labels.items()}
    return names, index, labels


def load_galaxies(images_dir, labels_path, class_scheme, crop, size, cache_dir, workers):
    """galaxy_vae.py's data: the images of images_dir, uint8 (N, 3, size, size), matched with their
    rows of the labels file (every mismatch counted): {"x", "y", "c", "ids"}, and the classes
    {"names", "counts", "layout", "conditions" (each class's mean condition vector: what the
    conditional model is given to generate that class)}, or None without a labels file."""
    images, ids = load_images(images_dir, crop, size, cache_dir, workers)
    if not labels_path:
        print("no --labels: training unsupervised; the class figures (class samples, latent "
              "colours) are skipped")
        return {"x": images, "y": torch.zeros(len(ids), dtype=torch.long), "c": None, "ids": ids}, None
    labels, kaggle = read_labels(labels_path, class_scheme)
    have = set(ids)
    warn_skipped(f"label rows have no image in {images_dir}", [g for g in labels if g not in have], "skipped")
    warn_skipped(f"images have no label row in {labels_path}", [g for g in ids if g not in labels], "left out")
    keep = [i for i, g in enumerate(ids) if g in labels]
    if not keep:
        fail(f"no image of {images_dir} has a row in {labels_path}")
    ids = [ids[i] for i in keep]
    names, index, conditions = classes_of({g: labels[g] for g in ids}, kaggle, class_scheme)
    y = torch.tensor([index[g] for g in ids])
    c = torch.stack([conditions[g] for g in ids])
    counts = torch.bincount(y, minlength=len(names)).tolist()
    print("classes: " + ", ".join(f"{n} {k}" for n, k in zip(names, counts)))
    classes = {"names": names, "counts": counts, "layout": "kaggle37" if kaggle else "labels",
               "conditions": torch.stack([c[y == k].mean(0) for k in range(len(names))])}
    return {"x": images[keep], "y": y, "c": c, "ids": ids}, classes


def split_galaxies(data, fraction, seed, limit, device):
    """load_galaxies' data split into (train, test), class by class: a seeded draw of
    round(fraction · n) of each class's n images to test. `limit` keeps the first N of each
    split. Every tensor moves to the device."""
    generator = torch.Generator().manual_seed(seed)
    test_idx = []
    for k in data["y"].unique():
        members = (data["y"] == k).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        test_idx.append(members[:round(fraction * len(members))])
    is_test = torch.zeros(len(data["y"]), dtype=torch.bool)
    is_test[torch.cat(test_idx)] = True
    parts = []
    for chosen in (~is_test, is_test):
        idx = chosen.nonzero().flatten()[:limit]
        parts.append({"x": data["x"][idx].to(device), "y": data["y"][idx].to(device),
                      "c": data["c"][idx].to(device) if data["c"] is not None else None,
                      "ids": [data["ids"][i] for i in idx]})
    if not len(parts[1]["x"]) or not len(parts[0]["x"]):
        fail(f"{len(data['y'])} images are too few to split with --test-fraction {fraction}")
    return parts


# ----------------------------------------------------------------------------------------------
# The training run: everything around a script's loop, one call away
# ----------------------------------------------------------------------------------------------
class Run:
    """The record of one training run: its history, wall seconds and the two files it writes.
    A script's fit shows each piece of bookkeeping as its own call:

        run = common.Run(args, out / "cnn", "cnn", {"model": model}, {"optimizer": opt}, generator)
        for epoch in range(run.done + 1, args.epochs + 1):
            losses = train_epoch(...)                                  # the loop and the step
            common.check_finite(epoch, run.weights_path, cross_entropy=losses)
            run.log(epoch, {"train_loss": ..., "test_loss": ...})     # history and log line
            run.save(epoch)                                            # <stem>.ckpt and <stem>.pt
            if common.stop_early(run.history, "test_loss", args.patience):
                break

    Start: a fresh run, or with --resume the checkpoint <stem>.ckpt put back (models, optimizers,
    random streams, history, and what was saved beside them, in `run.extra`); nothing to resume
    is a one-line error. Two files, both written atomically by save: <stem>.ckpt, the full
    checkpoint --resume needs (optimizer states and random streams: kept in --out-dir, not
    committed), and <stem>.pt, the weights-only file --load reads (model states, args, history;
    of the models named in `for_load` only, when given: a helper network --load never needs
    stays in the .ckpt).
    """

    def __init__(self, args, stem, kind, models, optimizers, generator, unit="epoch", total=None, for_load=None):
        self.args, self.kind, self.unit, self.for_load = args, kind, unit, for_load
        self.weights_path = Path(f"{stem}.pt")
        self.checkpoint_path = Path(f"{stem}.ckpt")
        self.models, self.optimizers, self.generator = models, optimizers, generator
        self.total = total if total is not None else args.epochs
        self.history, self.seconds, self.done, self.extra = [], 0.0, 0, {}
        self.trained_with, self.trained_on = vars(args), []
        if args.resume:  # True: this run's own checkpoint; a path: another one's, continued here
            path = self.checkpoint_path if args.resume is True else Path(args.resume)
            checkpoint = load_checkpoint(path, kind, flag="--resume")
            self.history, self.seconds, self.done = restore_run(checkpoint, path, models,
                                                                optimizers, generator)
            self.extra = {k: v for k, v in checkpoint.items() if k not in _RUN_KEYS}
            self.trained_on = checkpoint.get("trained_on", [])
            print(f"resuming {path} after {unit} {self.done} of {self.total}")
        first_model = next(iter(models.values()))
        self.timer = Timer(next(first_model.parameters()).device)
        session = {**versions(), "device": str(self.timer.device)}
        if session not in self.trained_on:  # a resumed run may continue on another machine
            self.trained_on.append(session)

    def provenance(self):
        """What a metrics file records of the training run: its flags, and the machine (versions)
        of each session it ran in, e.g. a run resumed on another CPU."""
        return {"trained_with": self.trained_with, "trained_on": self.trained_on}

    def log(self, step, record):
        """Append one evaluation record ({unit: step, values ...}) stamped with the wall seconds
        since the last one, and print its summary line. A value that is not finite (a NaN test
        loss) stops the run here, before anything is saved."""
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                fail(f"{key.replace('_', ' ')} became {value} at {self.unit} {step} (evaluation) "
                     f"— stopping; the last good weights stay in {self.weights_path}")
        record = {self.unit: step, **record, "seconds": round(self.timer.seconds(), 2)}
        self.timer = Timer(self.timer.device)
        self.seconds += record["seconds"]
        self.history.append(record)
        print(summary_line(step, self.total, record["seconds"], unit=self.unit,
                           **{k: v for k, v in record.items() if k not in (self.unit, "seconds")}),
              flush=True)  # progress reaches a log file as it happens

    def save(self, step, **extra):
        """Write <stem>.ckpt (for --resume) and <stem>.pt (for --load) after `step`; `extra` (e.g.
        sample snapshots a figure needs again after --load) is kept in run.extra and saved too."""
        self.extra.update(extra)
        shared = dict(args=vars(self.args), epoch=step, history=self.history,
                      seconds=self.seconds, trained_on=self.trained_on, **self.extra)
        models = {name: m.state_dict() for name, m in self.models.items()}
        save_checkpoint(self.checkpoint_path, self.kind, models=models, rng=rng_state(self.generator),
                        optimizers={n: o.state_dict() for n, o in self.optimizers.items()}, **shared)
        save_checkpoint(self.weights_path, self.kind, models={name: models[name] for name in self.for_load or models},
                        **shared)


_RUN_KEYS = ("kind", "args", "epoch", "history", "seconds", "trained_on", "models", "optimizers",
             "rng")


class LoadedRun:
    """What --load gives back in place of a Run: the history, seconds, args, machines and extras
    of the run that wrote the weights file (its models are already filled in)."""

    def __init__(self, checkpoint):
        self.history, self.seconds, self.done = (checkpoint["history"], checkpoint["seconds"],
                                                 checkpoint["epoch"])
        self.trained_with = checkpoint["args"]
        self.trained_on = checkpoint.get("trained_on", [])  # [] in a file older than the field
        self.extra = {k: v for k, v in checkpoint.items() if k not in _RUN_KEYS}

    provenance = Run.provenance


def load_run(path, kind, models, unit="epoch", checkpoint=None):
    """--load: put the weights of `path` (a .pt or .ckpt of `kind`; `checkpoint` when it was read
    already) into `models`; return the LoadedRun with its history."""
    checkpoint = load_weights(path, kind, models, "--load", checkpoint)
    print(f"loaded {path} (trained {checkpoint['epoch']} {unit}s); not training")
    return LoadedRun(checkpoint)


def check_finite(epoch, weights_path=None, unit="epoch", **per_batch_losses):
    """Stop the run if any loss term went NaN or infinite, naming epoch, batch and term.

    Each value is a 1-D tensor of one loss term per batch, kept on the device so that training
    never waits for the GPU to check a number; this runs once per epoch, before any saving.
    """
    for term, losses in per_batch_losses.items():
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            batch = bad[0].item()
            kept = f"; the last good weights stay in {weights_path}" if weights_path else ""
            fail(f"{term} loss became {losses[batch].item()} at {unit} {epoch}, batch {batch + 1}"
                 f" — stopping{kept}")


def patience_exhausted(test_losses, patience):
    """True when the last `patience` evaluations did not improve on the best one before them."""
    if patience == 0 or len(test_losses) <= patience:
        return False
    return min(test_losses[-patience:]) >= min(test_losses[:-patience])


def stop_early(history, key, patience):
    """--patience: True (and says why) when the number `key` of the history's records (those that
    hold it: evaluations) has not improved on its best for `patience` evaluations; 0 = never."""
    values = [record[key] for record in history if key in record]
    if history and key in history[-1] and patience_exhausted(values, patience):
        print(f"stopping: {key.replace('_', ' ')} has not improved for {patience} evaluations")
        return True
    return False


def summary_line(epoch, epochs, seconds, unit="epoch", **values):
    """`epoch 3/50 | train loss 0.312 | test acc 0.912 | 4.2 s` (None values are left out; a
    count such as an iteration number is written whole)."""
    parts = [f"{unit} {epoch}/{epochs}"]
    for key, value in values.items():
        if value is not None:
            parts.append(f"{key.replace('_', ' ')} {value if isinstance(value, int) else f'{value:.4g}'}")
    return " | ".join(parts + [f"{seconds:.1f} s"])


class Timer:
    """Wall-clock seconds that stay honest on a GPU: waits for the kernels queued on CUDA or MPS
    before reading the clock, so asynchronous work is counted where it ran."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.start = time.perf_counter()

    def seconds(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------------------------------
# Checkpoints and metrics
# ----------------------------------------------------------------------------------------------
def out_dir(args):
    path = Path(args.out_dir)
    if path.exists() and not path.is_dir():
        fail(f"--out-dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"--out-dir {path} cannot be created ({error.strerror or type(error).__name__})")
    return path


# Flags that do not change what a run computes: they stay out of its name.
NOT_IN_NAME = ("device", "data_dir", "out_dir", "load", "resume", "deterministic")
# Short tags of the shared flags in a run's name (a script adds its own, e.g. kl_weight → "kl").
COMMON_TAGS = {"epochs": "e", "batch_size": "bs", "lr": "lr", "seed": "seed", "amp": "amp",
               "patience": "patience", "limit": "limit"}


def run_name(base, args, defaults, tags=None, skip=()):
    """The name a run's files carry: `base` (the script and its variant, e.g. "vae_mlp"), then one
    tag per flag whose value differs from `defaults` (the variant's parse_args([]) values), in the
    order of the flags: vae_mlp_kl0.5, galaxy_vae_conv_e1_z32, lstm_tweets_h64. So a changed knob
    writes beside the committed run, never over it, and the default command rewrites it (that is
    reproduction). Flags of NOT_IN_NAME and `skip` (paths, flags already in `base`, sweep lists)
    stay out. A tag is tags[flag] (COMMON_TAGS for the shared flags; the flag's own name
    otherwise) followed by the value: a number as written by :g, a choice after a dash; a switch
    is its tag when on, "no-" and its tag when a default-on switch is off."""
    tags = {**COMMON_TAGS, **(tags or {})}
    parts = [base]
    for flag, value in vars(args).items():
        if flag in NOT_IN_NAME or flag in skip or value == defaults.get(flag, value):
            continue
        tag = tags.get(flag, flag.replace("_", "-"))
        if isinstance(value, bool):
            parts.append(tag if value else f"no-{tag}")
        elif isinstance(value, (int, float)):
            parts.append(f"{tag}{value:g}")
        elif isinstance(value, str):
            parts.append(f"{tag}-{value}" if tag else value)
        else:  # a list (a sweep's values, several files): the script names it itself
            raise ValueError(f"run_name: --{flag} holds {value!r}; skip it and name it in the script")
    return "_".join(parts)


def atomic_write(path, write):
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
    """One dict: `kind` (which script and variant wrote it) plus model states, args, epoch,
    history, ... Loadable with weights_only=True: tensors, numbers, strings, lists, dicts."""
    atomic_write(path, lambda tmp: torch.save({"kind": kind, **payload}, tmp))


def load_checkpoint(path, kind, flag="--load"):
    """Load a file written by save_checkpoint for `kind`; anything else is a one-line error that
    names what is wrong (absent, a folder, empty, damaged, not ours, another script's)."""
    path = Path(path)
    if flag == "--resume" and not path.exists():
        fail(f"--resume: no checkpoint at {path} to continue from (run once without --resume)")
    if not path.exists():
        fail(f"{flag}: no weights file at {path}")
    if path.is_dir():
        fail(f"{flag}: {path} is a folder, not a weights file")
    if path.stat().st_size == 0:
        fail(f"{flag}: {path} is empty (a run killed while writing it leaves a .tmp file, never "
             "an empty one: this file was cut elsewhere)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        fail(f"{flag}: {path} is not a weights file torch can read: it is damaged, truncated or "
             f"in another format ({type(error).__name__})")
    if not isinstance(checkpoint, dict) or "kind" not in checkpoint:
        fail(f"{flag}: {path} is not a checkpoint written by this repository "
             f"(expected {kind!r} weights)")
    if checkpoint["kind"] != kind:
        fail(f"{flag}: {path} holds {checkpoint['kind']!r} weights, expected {kind!r}")
    if flag == "--load" and checkpoint.get("args", {}).get("amp"):
        print(f"--load: {path} was trained with --amp (bf16 autocast of the training steps); its "
              f"figures and numbers are redone in fp32, as every evaluation here runs, on any "
              f"device", flush=True)
    return checkpoint


def load_state(module, state, path, what):
    """load_state_dict with a one-line error when the weights come from another architecture."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        problem = str(error).splitlines()[1].strip().rstrip(".") if "\n" in str(error) else ""
        fail(f"the weights in {path} do not fit {what} (another architecture or size: "
             f"{problem or 'different parameters'})")


def restore_run(checkpoint, path, models, optimizers=(), generator=None):
    """Put a checkpoint back into `models` (and, for --resume, `optimizers` and the random
    streams). Returns (history, wall seconds so far, last finished epoch)."""
    for name, module in models.items():
        load_state(module, checkpoint["models"][name], path, f"the {checkpoint['kind']!r} {name}")
    for name, optimizer in dict(optimizers).items():
        optimizer.load_state_dict(checkpoint["optimizers"][name])
    if generator is not None:
        restore_rng_state(checkpoint["rng"], generator)
    return checkpoint["history"], checkpoint["seconds"], checkpoint["epoch"]


def load_weights(path, kind, models, flag, checkpoint=None):
    """The weights of `path` (a .pt or .ckpt of `kind`; `checkpoint` when it was read already)
    put into `models`: --load's, or another run's as the start of this one (a pretrained
    encoder, a classifier). Errors name `flag`. Returns the checkpoint."""
    checkpoint = checkpoint or load_checkpoint(path, kind, flag=flag)
    restore_run(checkpoint, path, models)
    return checkpoint


def require_file(path, flag, command):
    """A file another run writes (weights a run builds on): absent is one line with the command
    to run first. Nothing here trains another run behind the user's back."""
    path = Path(path)
    if not path.exists():
        fail(f"{flag}: no file at {path}; run `{command}` first (or pass {flag} FILE)")
    return path


def save_metrics(path, args, device, seconds, history, final, **extra):
    """The run's JSON record: args, device, wall seconds, one record per evaluation, final block."""
    write_json(path, {"args": vars(args), "device": str(device), "versions": versions(),
                      "wall_seconds": round(seconds, 2), "history": history, "final": final, **extra})


def read_metrics(path, needs, what):
    """A <run>_metrics.json that save_metrics wrote (for --replot: a run's curves redrawn from its
    history when its weights are not kept), whose history records hold the key `needs`; anything
    else is one line naming the problem. Returns the record and the run's name."""
    path = Path(path)
    if not path.is_file():
        fail(f"--replot: {path} is a folder, not a metrics file" if path.is_dir() else
             f"--replot: no metrics file at {path}")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        fail(f"--replot: {path} is not a metrics JSON (not readable as JSON text)")
    history = metrics.get("history") if isinstance(metrics, dict) else None
    if not history or not isinstance(history, list) or needs not in history[-1]:
        fail(f"--replot: {path} is not the metrics of {what} (no training history with {needs!r})")
    return metrics, path.name.removesuffix("_metrics.json")


def write_json(path, record):
    text = json.dumps(record, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ----------------------------------------------------------------------------------------------
# Figures: one function per kind of plot, each writes one PNG and closes it
# ----------------------------------------------------------------------------------------------
def save_figure(fig, path):
    """Lay out, write and close one figure (every plot helper here, and a script's own, ends so)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# Numbers measured only every few epochs (accuracies, test losses): drawn as points, since lines
# between such sparse points would draw a shape (a dip, a V) that nothing measured.
SPARSE = {"linestyle": "none", "marker": "o", "markersize": 6}


def plot_panels(path, panels, xlabel, title, markers=True, ncols=None, log_y=False, styles=None,
                caption=None, sharey=False, ylims=None, legend_below=False):
    """panels: {ylabel: {label: (xs, ys)}}, one axis per entry side by side (e.g. reconstruction
    and KL, whose scales differ), at most three to a row (or `ncols`); a legend on every axis
    with a named curve.
    log_y: logarithmic y axes (a first epoch far above the rest hides the later ones), labelled
    at 1, 2, 5 × 10^n (readable_log_ticks): True for every panel, or a set of the panels'
    ylabels. styles: {label: matplotlib line options}, e.g. one colour per run with solid train
    and dashed test curves; a curve not named there gets the next default colour. At most three panels to a row: a figure at most 3x as wide as tall.
    caption: a sentence or two under the panels (what a reader must know to read them).
    sharey: one y range for every panel (related quantities read at one scale); ylims:
    {ylabel: (low, high)}, a stated range for a panel whose autoscaled one would make noise look
    like swings; legend_below: each legend under its axis, where it cannot cover a curve."""
    ncols = ncols or math.ceil(len(panels) / math.ceil(len(panels) / 3))  # 4 panels: 2x2, 5: 3+2
    nrows = math.ceil(len(panels) / ncols)
    height = max(4 * nrows, 5.5 * ncols / 3)
    if legend_below:  # room under each row for its tallest legend (two columns past 3 entries)
        height += nrows * (0.4 + 0.19 * max(math.ceil(len(c) / (2 if len(c) > 3 else 1)) for c in panels.values()))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, height), squeeze=False, sharey=sharey)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, (ylabel, curves) in zip(axes.flat, panels.items()):
        for label, (xs, ys) in curves.items():
            ax.plot(xs, ys, label=label, **{"marker": "o" if markers else None, "markersize": 3,
                                            **(styles or {}).get(label, {})})
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if ylabel in (ylims or {}):
            ax.set_ylim(*ylims[ylabel])
        # epochs and steps are whole numbers; 'auto': as many ticks as fit the axis's width
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
        if log_y is True or ylabel in (log_y or ()):
            readable_log_ticks(ax)
        ax.grid(alpha=0.3)
        if not any(curves):  # every labelled curve is named ("" draws an axis's only curve unnamed)
            continue
        if legend_below:  # 34 points under the axis: below its tick labels and xlabel
            below = offset_copy(ax.transAxes, fig=fig, y=-34, units="points")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below,
                      fontsize=8, ncol=2 if len(curves) > 3 else 1)
        else:
            ax.legend()
    fig.suptitle(textwrap.fill(title, 55 * ncols))  # ~55 characters fit above one panel
    if caption:
        fig.supxlabel(textwrap.fill(caption, 80 * ncols), fontsize=9, ha="left", x=0.01)
    save_figure(fig, path)


def readable_log_ticks(ax):
    """A logarithmic y axis labelled in plain numbers (50, 100, 200, 500; matplotlib labels only
    10^n by default), the denser the fewer decades the curves span, with a faint grid at each
    1-9 × 10^n, so a final value can be read off."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    decades = math.log10(high / low)
    if decades < 0.5:  # a narrow band (a KL settling at 20-23 after 32): evenly spaced labels
        ax.yaxis.set_major_locator(MaxNLocator(nbins=12))
    else:
        subs = ((1, 2, 5) if decades > 2 else (1, 1.2, 1.5, 2, 3, 5, 7) if decades > 1 else
                (1, 1.2, 1.5, 2, 3, 4, 5, 6, 7, 8, 9))  # the labelled values in each decade
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(which="minor", axis="y", alpha=0.12)


def epoch_series(history, key, prefixes=("train", "test"), suffix=""):
    """{"train": (epochs, values), "test": (...)} of `key` from a run's history records (which hold
    e.g. train_recon and test_recon), ready for plot_curves / plot_panels; `suffix` is appended
    to each label when two runs share one axis."""
    epochs = [r["epoch"] for r in history]
    return {f"{p}{suffix}": (epochs, [r[f"{p}_{key}"] for r in history]) for p in prefixes}


def plot_curves(path, curves, xlabel, ylabel, title, markers=True, log_y=False, styles=None, **options):
    """curves: {label: (xs, ys)} drawn on one axis, with a legend (styles and options
    (caption, legend_below, ...): as in plot_panels)."""
    plot_panels(path, {ylabel: curves}, xlabel, title, markers, log_y=log_y, styles=styles, **options)


def plot_image_rows(path, rows, title, nrow=None):
    """rows: {label: (N, C, H, W) images in [0, 1]}; each entry is one block of rows (nrow images
    per row, default all N in one), labelled on the left: samples per epoch, per KL weight, ..."""
    from torchvision.utils import make_grid  # imported here: see dataset_class
    grids = [make_grid(images.detach().float().cpu().clamp(0, 1),
                       nrow=nrow or len(images), padding=2, pad_value=1.0)
             for images in rows.values()]  # each (3, H', W')
    width = max(g.shape[2] for g in grids)
    height = sum(g.shape[1] for g in grids)
    label_room = 1.6 if any(rows) else 0.0
    fig = plt.figure(figsize=(max(width / 36 + label_room, 6.0), height / 36 + 0.6))
    fits = int(fig.get_figwidth() * 9)  # characters of the title font across the figure
    fig.suptitle("\n".join(textwrap.fill(line, fits) for line in title.splitlines()))
    spec = fig.add_gridspec(len(grids), 1, height_ratios=[g.shape[1] for g in grids])
    for i, (label, grid) in enumerate(zip(rows, grids)):
        ax = fig.add_subplot(spec[i])
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        for side in ax.spines.values():
            side.set_visible(False)
    save_figure(fig, path)


def plot_scatter(path, panels, labels, names, title, xlabel="z₁", ylabel="z₂", overlays=None):
    """panels: {panel title: (N, 2) points}, side by side, all coloured by the same `labels`
    ((N,) class indices, a legend entry per name); overlays: at most two {label: (M, 2) points},
    e.g. where random inputs come from (drawn under the classes as faint dots) and the inputs
    actually used (black crosses on top)."""
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
        legend = ax.legend(fontsize="medium", loc="best", markerscale=1.5)
        for handle in legend.legend_handles:  # every entry the same readable size
            handle.set_sizes([40])
            handle.set_alpha(1)
    fig.suptitle(title)
    save_figure(fig, path)
