"""Assignment D, part 2: VGG11 (configuration A of Simonyan & Zisserman, 2015, Table 1) on MNIST.

    conv64 - M - conv128 - M - conv256 - conv256 - M - conv512 - conv512 - M - conv512 - conv512 - M
    → FC 4096 → FC 4096 → FC 10
3x3 convs (stride 1, padding 1) with ReLU, 2x2 max-pools with stride 2, dropout 0.5 after the two
hidden FC layers (Sec. 2.1 and 3.1 of the paper); the softmax lives in the loss. The digits are
resized to 32x32 (resize says why), which changes two layers besides the 10-way output (VGG11).

Training follows the paper where it carries over, each choice a flag: SGD with momentum and
weight decay (make_optimizer), a warm-up and cosine schedule in place of its divide-by-10 on a
plateau (learning_rate), He initialisation in place of its small Gaussian weights (VGG11), the
training set's mean pixel subtracted, and --shift N, small random moves of the digits as the
counterpart of its random crops (off by default; the committed full run used --shift 2).
--subset 0.1 is the assignment's CPU option: a tenth of the training set, balanced by class.

Page: docs/vgg_mnist.md (what it does, results, answers, every flag)
Run: python vgg_mnist.py --data-dir ../shared/data --subset 0.1
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

KIND = "vgg_mnist"  # written into the checkpoint; --load refuses weights of any other kind
CONFIG_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]  # Table 1, column A
SIDE = 32  # MNIST's 28x28 is resized to this (resize: why 32)
# --load takes these flags from the run that wrote the file: its model and its data selection
RUN_ARGS = ("fc_width", "subset", "limit", "seed", "batch_size", "eval_every_batches", "shift")


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=5, batch_size=64, lr=0.01)
    parser.add_argument("--subset", type=common.positive_float, default=1.0,
                        help="train on this fraction of the training set, the same number of "
                             "images from every class, drawn with --seed (0.1 = ~600 per class)")
    parser.add_argument("--eval-every-batches", type=common.positive_int, metavar="N",
                        help="record train/test accuracy and loss every N minibatches, counted "
                             "from each epoch's start, and at each epoch's end (instead of only "
                             "at each epoch's end); a record never spans two epochs")
    parser.add_argument("--shift", type=common.nonnegative_int, default=0, metavar="PIXELS",
                        help="move each training image by a random whole number of pixels, up to "
                             "this many in each direction (0: no augmentation)")
    parser.add_argument("--fc-width", type=common.positive_int, default=4096,
                        help="width of the two hidden fully connected layers (the paper: 4096)")
    parser.add_argument("--dropout", type=common.nonnegative_float, default=0.5,
                        help="dropout probability after the two hidden FC layers (the paper: 0.5)")
    parser.add_argument("--momentum", type=common.nonnegative_float, default=0.9,
                        help="SGD momentum (the paper: 0.9)")
    parser.add_argument("--weight-decay", type=common.nonnegative_float, default=5e-4,
                        help="SGD weight decay, the paper's L2 penalty")
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    if args.subset > 1:
        parser.error(f"--subset is a fraction of the training set, in (0, 1]; got {args.subset}")
    if args.dropout >= 1:
        parser.error(f"--dropout is a probability below 1; got {args.dropout}")
    return args


# ----------------------------------------------------------------------------------------------
# MODEL
# ----------------------------------------------------------------------------------------------
def conv_stack(config, in_channels=1):
    """Table 1's convolutional part: one entry per column row, a number c = a 3x3 conv to c
    channels with its ReLU (one Sequential entry), "M" = a 2x2 max-pool with stride 2."""
    layers = []
    for entry in config:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))             # side halves
        else:
            layers.append(nn.Sequential(nn.Conv2d(in_channels, entry, 3, padding=1),
                                        nn.ReLU(inplace=True)))              # side kept
            in_channels = entry
    return nn.Sequential(*layers)


class VGG11(nn.Module):
    """Configuration A for one-channel 32x32 inputs. Shapes for a batch of B images:
    (B, 1, 32, 32) → 64@32 → M 16 → 128@16 → M 8 → 256@8 → 256@8 → M 4 → 512@4 → 512@4 → M 2 →
    512@2 → 512@2 → M 1 → (B, 512, 1, 1) → (B, 512) → (B, fc) → (B, fc) → (B, 10) logits.

    Layers changed from the paper: (1) the first conv takes 1 channel (grey MNIST), not 3 (RGB);
    (2) FC1 takes 512 inputs: a 224x224 image leaves a 7x7x512 map (25,088 inputs), 32x32 leaves
    1x1x512; its width stays 4096 (--fc-width changes both hidden FC layers); (3) 10 outputs,
    not 1000. He (Kaiming) initialisation (He et al., 2015) of every layer keeps the activations'
    scale through the eight ReLU convs and the FC layers, so the net trains from scratch without
    batch normalisation (which VGG predates): with the paper's N(0, 0.01) FC weights (as
    torchvision's VGG) the signal shrank in the 4096-wide layers and, in a probe on the tenth of
    MNIST, the loss sat at ln 10 = 2.30 for a whole epoch; with He initialisation it was near 1.1
    after 100 minibatches."""

    def __init__(self, fc_width=4096, dropout=0.5, num_classes=10):
        super().__init__()
        self.features = conv_stack(CONFIG_A, in_channels=1)
        self.classifier = nn.Sequential(
            nn.Flatten(),                                            # (B, 512, 1, 1) -> (B, 512)
            nn.Linear(512, fc_width), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc_width, num_classes),
        )
        for module in self.modules():  # He et al. 2015: variance 2 / fan for ReLU layers
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                mode = "fan_out" if isinstance(module, nn.Conv2d) else "fan_in"  # as torchvision
                nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):  # x: (B, 1, 32, 32), mean-subtracted
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------------------------
# LOSS
# ----------------------------------------------------------------------------------------------
def classification_loss(logits, labels):
    """Multinomial logistic regression, the paper's objective (Sec. 3.1):
    L = -(1/B) Σ_b log softmax(logits_b)[y_b], averaged over the batch. Weight decay is applied
    by the optimizer, not here."""
    return F.cross_entropy(logits, labels, reduction="mean")


# ----------------------------------------------------------------------------------------------
# DATA
# ----------------------------------------------------------------------------------------------
def balanced_subset(labels, fraction, generator):
    """Sorted indices of round(fraction * N / K) random examples of each of the K classes (or all
    of a class, if it has fewer): a class-balanced subset, drawn with `generator` (CPU)."""
    labels = labels.cpu()
    classes = labels.unique()
    per_class = max(1, round(fraction * len(labels) / len(classes)))
    chosen = []
    for c in classes:
        members = (labels == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def resize(x, side=SIDE, batch_size=10000):
    """(N, 1, 28, 28) -> (N, 1, side, side), bilinear, in chunks to bound the memory it needs.

    Why 32: the five max-pools halve the side five times, 32 → 16 → 8 → 4 → 2 → 1. From 28 they
    go 28 → 14 → 7 → 3 → 1 → 0 (floor division): the last pool gets a 1x1 map and PyTorch refuses
    it, and before that the odd sides drop a row and a column of the picture. A power of two keeps
    every pixel to the end; 32 is the smallest above 28 (padding 2 black pixels would do as well)."""
    return torch.cat([F.interpolate(x[i:i + batch_size], size=(side, side), mode="bilinear",
                                    align_corners=False) for i in range(0, len(x), batch_size)])


def prepare(args, device):
    """MNIST as 32x32 tensors on the device, the training set cut to --subset and both splits
    minus the training set's mean pixel. Returns (train, test) as (x, y) pairs."""
    (train_x, train_y), (test_x, test_y) = common.load_mnist_like("mnist", args.data_dir, device,
                                                                  args.limit)
    if args.subset < 1:
        chosen = balanced_subset(train_y, args.subset,
                                 torch.Generator().manual_seed(args.seed)).to(device)
        train_x, train_y = train_x[chosen], train_y[chosen]
        counts = torch.bincount(train_y.cpu(), minlength=10).tolist()
        print(f"--subset {args.subset}: {len(train_y)} training images, per class {counts}")
    train_x, test_x = resize(train_x), resize(test_x)
    mean = train_x.mean()
    return (train_x - mean, train_y), (test_x - mean, test_y)


# ----------------------------------------------------------------------------------------------
# TRAINING
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, data, batch_size=500):
    """Mean cross-entropy and accuracy over a whole split, in eval mode (dropout off)."""
    x, y = data
    was_training = model.training
    model.eval()
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for idx in common.batch_indices(len(x), batch_size, x.device):
        logits = model(x[idx])
        loss_sum += F.cross_entropy(logits, y[idx], reduction="sum")
        correct += (logits.argmax(1) == y[idx]).sum()
    model.train(was_training)
    return loss_sum.item() / len(x), correct.item() / len(x)


def measure(model, train, test, step, batch_losses):
    """One point of the curves: the four quantities the assignment plots, plus the mean of
    `batch_losses`, the minibatch losses since the last point (with dropout on; what the
    optimizer saw)."""
    record = {"step": step, "batch_loss": batch_losses.mean().item()}
    record["train_loss"], record["train_acc"] = evaluate(model, train)
    record["test_loss"], record["test_acc"] = evaluate(model, test)
    return record


def run_name(args):
    """What this run's files are called: with --load, the loaded file's own name; otherwise
    "vgg_mnist" plus every knob that differs from the defaults (vgg_mnist_subset0.1,
    vgg_mnist_amp_shift2, vgg_mnist_e15_subset0.1): a quick edit writes beside the committed run."""
    if args.load:
        return Path(args.load).stem
    return common.run_name(KIND, args, vars(parse_args([])),
                           {"eval_every_batches": "every", "fc_width": "fc", "weight_decay": "wd"})


def make_optimizer(model, args):
    """SGD with --momentum and --weight-decay (the paper's 0.9 and 5e-4, its L2 penalty applied by
    the optimizer); batch 64 by default (the paper: 256; more steps on a tenth of MNIST). fit sets
    every step's learning rate from learning_rate."""
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay)


def learning_rate(step, total_steps, args):
    """The rate of minibatch `step` (counted from 0): a linear warm-up over the first 10% of the
    steps to --lr (the paper's 0.01), then a cosine decay to 0, in place of the paper's divide
    by 10 on a plateau, which needs a validation set and many epochs."""
    return common.cosine_lr(args.lr, step, total_steps, warmup_steps=total_steps // 10)


def train_step(model, optimizer, inputs, labels, args, device):
    """One minibatch: classification_loss of the model's logits (in training mode: dropout on),
    its gradient, the optimizer's step. Returns the loss, left on the device."""
    with common.autocast(args, device):
        loss = classification_loss(model(inputs), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def fit(model, train, test, args, device, generator, stem):
    """Train for args.epochs, or until the test loss has not improved for --patience records. A
    record (measure) after every --eval-every-batches N minibatches of an epoch and at its end,
    so none spans two epochs; <stem>.ckpt and <stem>.pt at every epoch's end and where --patience
    stops the run. Returns the Run."""
    optimizer = make_optimizer(model, args)
    run = common.Run(args, stem, KIND, {"model": model}, {"optimizer": optimizer}, generator)
    x, y = train
    steps_per_epoch = common.num_batches(len(x), args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    every = args.eval_every_batches or steps_per_epoch
    background = x.amin().item()  # a black pixel minus the mean: what a shift uncovers
    model.train()
    for epoch in range(run.done + 1, args.epochs + 1):
        batch_losses = torch.empty(steps_per_epoch, device=device)
        recorded = 0  # minibatches of this epoch whose losses are in a record already
        batches = common.batch_indices(len(x), args.batch_size, device, generator)
        for i, idx in enumerate(common.progress(batches, steps_per_epoch, f"epoch {epoch}")):
            step = (epoch - 1) * steps_per_epoch + i + 1  # minibatches done after this one
            common.set_lr(optimizer, learning_rate(step - 1, total_steps, args))
            inputs = x[idx]
            if args.shift:  # augmentation: the digits moved a little
                inputs = common.random_shift(inputs, generator, args.shift, background)
            batch_losses[i] = train_step(model, optimizer, inputs, y[idx], args, device)
            epoch_done = i + 1 == steps_per_epoch
            if (i + 1) % every == 0 or epoch_done:  # a record
                common.check_finite(epoch, run.weights_path, cross_entropy=batch_losses[:i + 1])
                run.log(epoch, measure(model, train, test, step, batch_losses[recorded:i + 1]))
                recorded = i + 1
                stop = common.stop_early(run.history, "test_loss", args.patience)
                if epoch_done or stop:
                    run.save(epoch)
                if stop:
                    return run
    return run


# ----------------------------------------------------------------------------------------------
# FIGURES
# ----------------------------------------------------------------------------------------------
def plot_history(history, args, n_train, path):
    """The assignment's four plots in two panels, training and test on one axis in each, against
    epochs (or minibatches with --eval-every-batches): accuracy, and the cross-entropy on a
    logarithmic axis (a training loss of 0.0006 against a test loss of 0.07 is the memorisation
    the runs show, and on a linear axis both lie flat on the floor)."""
    by_step = args.eval_every_batches is not None
    xs = [r["step"] if by_step else r["epoch"] for r in history]
    xlabel = f"minibatches of {args.batch_size}" if by_step else "epoch"
    shifts = f", shifted up to {args.shift} px" if args.shift else ""
    loss_label = "cross-entropy (log scale)"
    panels = {"accuracy (dropout off)": {"test set": (xs, [r["test_acc"] for r in history]),
                                         "whole training set": (xs, [r["train_acc"] for r in history])},
              loss_label: {"test set": (xs, [r["test_loss"] for r in history]),
                           "whole training set, dropout off": (xs, [r["train_loss"] for r in history]),
                           "mean minibatch loss, dropout on": (xs, [r["batch_loss"] for r in history])}}
    common.plot_panels(path, panels, xlabel, f"VGG11 (config A) on MNIST 32x32, {n_train} training images{shifts}",
                       log_y={loss_label})


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    generator = common.seed_everything(args.seed)
    out, name = common.out_dir(args), run_name(args)
    checkpoint = common.load_checkpoint(args.load, KIND) if args.load else None
    if checkpoint:  # read first: a wrong file fails at once, and its run's flags decide the model
        common.use_run_args(args, checkpoint, RUN_ARGS, args.load)
    train, test = prepare(args, device)
    model = VGG11(args.fc_width, args.dropout).to(device)
    if args.load:
        run = common.load_run(args.load, KIND, {"model": model}, checkpoint=checkpoint)
    else:
        run = fit(model, train, test, args, device, generator, out / name)
    train_loss, train_acc = evaluate(model, train)
    test_loss, test_acc = evaluate(model, test)
    final = {"epochs_trained": run.history[-1]["epoch"], "steps": run.history[-1]["step"],
             "train_images": len(train[0]), "train_loss": train_loss, "train_acc": train_acc,
             "test_loss": test_loss, "test_acc": test_acc}
    plot_history(run.history, args, len(train[0]), out / f"{name}_curves.png")
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history,
                        final, weights=str(args.load or out / f"{name}.pt"),
                        **run.provenance(),
                        parameters=sum(p.numel() for p in model.parameters()))
    print(f"final: train acc {train_acc:.4f} | test acc {test_acc:.4f} | train loss "
          f"{train_loss:.4f} | test loss {test_loss:.4f} | {run.seconds:.0f} s of training")


if __name__ == "__main__":
    common.run_main(main)
