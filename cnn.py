"""Assignment A, task 1: a three-layer CNN classifier for Fashion-MNIST.

The structure is fixed by the assignment:
    Conv(32) 3x3 stride 2 → Conv(64) 3x3 stride 2 → Conv(128) 3x3 stride 2 → FC(256) → Softmax(10)
with padding 1 (28 → 14 → 7 → 4) and ReLU between layers. Train and test accuracy are measured
at epoch 1, every --eval-every epochs and at the last epoch, and plotted against the epoch.

Training choices (ours; the assignment leaves them open), each for a reason:
- AdamW (Loshchilov & Hutter 2019): Adam converges fast on this small net; decoupled weight
  decay 0.05 is a mild regulariser that does not fight the adaptive step sizes.
- One epoch of linear warm-up, then cosine decay to zero: the loss settles at the end of the
  run instead of bouncing at a fixed learning rate, so "until the loss converges" has a meaning
  (--schedule constant keeps --lr fixed).
- Random horizontal flips and shifts of up to 2 pixels (--augment): clothes are left-right
  symmetric and not always centred. Without them the net memorises the training set and its
  test loss doubles after epoch 10 (docs/cnn.md, "Beyond the assignment"). Done on the device,
  by indexing, so the data path stays fast.

Page: docs/cnn.md (what it does, results, answers, every flag)
Run:     python cnn.py --data-dir ../shared/data           (add --device cuda on a GPU)
"""
import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

KIND = "cnn"  # written into the checkpoint; --load refuses weights of any other kind


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=30, batch_size=128, lr=2e-3)
    parser.add_argument("--weight-decay", type=common.nonnegative_float, default=0.05,
                        help="AdamW's decoupled weight decay")
    parser.add_argument("--eval-every", type=common.positive_int, default=10,
                        help="measure train and test accuracy every N epochs (and at the first "
                             "and last epoch)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random horizontal flips and shifts of up to 2 pixels")
    parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                        help="cosine: one epoch of warm-up, then cosine decay to zero; constant: "
                             "--lr throughout (with --weight-decay 0 and --no-augment, joint.py's "
                             "recipe: plain Adam at a fixed rate)")
    args = parser.parse_args(argv)
    common.check_common_args(parser, args)
    return args


# ----------------------------------------------------------------------------------------------
# MODEL
# ----------------------------------------------------------------------------------------------
class CNN(nn.Module):
    """The assignment's CNN. `features` ends in the 256-d FC layer (reused by the sample-quality
    metric of the generators); `classifier` maps it to 10 logits, the softmax lives in the loss."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),    # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),   # (B, 64, 7, 7)
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),  # (B, 128, 4, 4)
            nn.Flatten(),                                           # (B, 2048)
            nn.Linear(128 * 4 * 4, 256), nn.ReLU(),                 # (B, 256)
        )
        self.classifier = nn.Linear(256, 10)                        # (B, 10) logits

    def forward(self, x):  # x: (B, 1, 28, 28) in [0, 1]
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------------------------
# LOSS
# ----------------------------------------------------------------------------------------------
def classification_loss(logits, labels):
    """Cross-entropy of the softmax: L = -(1/B) Σ_b log softmax(logits_b)[y_b].

    The softmax layer of the assignment is folded in here (log-softmax is the numerically stable
    form). Averaged over the batch.
    """
    return F.cross_entropy(logits, labels, reduction="mean")


# ----------------------------------------------------------------------------------------------
# TRAINING
# ----------------------------------------------------------------------------------------------
def augment(x, generator, max_shift=2):
    """Flip each image left-right with probability 1/2, then shift it by up to `max_shift` pixels
    in each direction (zero fill, common.random_shift). Random numbers come from `generator`
    (CPU), for reproducibility."""
    flip = common.to_device(torch.rand(len(x), generator=generator) < 0.5, x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return common.random_shift(x, generator, max_shift)


def train_epoch(model, optimizer, data, args, epoch, generator):
    """One pass over the training set; returns the per-batch losses (on the device)."""
    x, y = data
    model.train()
    steps_per_epoch = common.num_batches(len(x), args.batch_size)
    losses = torch.empty(steps_per_epoch, device=x.device)
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, steps_per_epoch, f"epoch {epoch}")):
        if args.schedule == "cosine":
            step = (epoch - 1) * steps_per_epoch + i
            common.set_lr(optimizer, common.cosine_lr(args.lr, step, args.epochs * steps_per_epoch,
                                                      warmup_steps=steps_per_epoch))
        inputs = augment(x[idx], generator) if args.augment else x[idx]
        with common.autocast(args, x.device):
            loss = classification_loss(model(inputs), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[i] = loss.detach()
    return losses


@torch.no_grad()
def evaluate(model, data, batch_size=1000):
    """Mean cross-entropy and accuracy over a whole split, in eval mode, without augmentation."""
    x, y = data
    model.eval()
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for idx in common.batch_indices(len(x), batch_size, x.device):
        logits = model(x[idx])
        loss_sum += F.cross_entropy(logits, y[idx], reduction="sum")
        correct += (logits.argmax(1) == y[idx]).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


def make_optimizer(model, args):
    """AdamW at --lr (the schedule's peak; train_epoch sets each step's rate) with --weight-decay."""
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def fit(model, train, test, args, generator, stem):
    """Train for args.epochs, or until the test loss has not improved for --patience evaluations;
    <stem>.ckpt and <stem>.pt after every epoch. Returns the Run (history, wall seconds)."""
    optimizer = make_optimizer(model, args)
    run = common.Run(args, stem, KIND, {"model": model}, {"optimizer": optimizer}, generator)
    for epoch in range(run.done + 1, args.epochs + 1):
        batch_losses = train_epoch(model, optimizer, train, args, epoch, generator)
        common.check_finite(epoch, run.weights_path, cross_entropy=batch_losses)
        record = {"train_loss": batch_losses.mean().item()}
        if epoch == 1 or epoch % args.eval_every == 0 or epoch == args.epochs:
            _, record["train_acc"] = evaluate(model, train)
            record["test_loss"], record["test_acc"] = evaluate(model, test)
        run.log(epoch, record)
        run.save(epoch)
        if common.stop_early(run.history, "test_loss", args.patience):
            break
    return run


def run_name(args):
    """What this run's files are called: with --load, the loaded file's own name; otherwise "cnn"
    plus every knob that differs from the defaults (cnn_lr0.003, cnn_no-augment): a quick edit
    writes beside the committed run (common.run_name)."""
    if args.load:
        return Path(args.load).stem
    return common.run_name(KIND, args, vars(parse_args([])), {"weight_decay": "wd", "schedule": ""})


# ----------------------------------------------------------------------------------------------
# SAMPLE QUALITY: the trained CNN as the feature extractor of a Fréchet distance for generators
# ----------------------------------------------------------------------------------------------
def add_sample_quality_args(parser):
    """The flag every generator script (dcgan, vaegan, vae, autoencoder) takes for the metric."""
    parser.add_argument("--cnn-weights", metavar="FILE",
                        help="cnn.py's weights, whose 256-d features measure sample quality "
                             "(default: cnn.pt in --out-dir; absent: the metric is skipped)")


def frechet_distance(features_a, features_b):
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D):

        d² = ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)      (Dowson & Landau 1982; FID, Heusel et al. 2017)

    Tr((Σa Σb)^½) is the sum of the square roots of the eigenvalues of Σa^½ Σb Σa^½, a symmetric
    positive semi-definite matrix with the same eigenvalues, so two symmetric eigendecompositions
    replace a general matrix square root. Float64 throughout, on the CPU whatever device the
    features come from (MPS has no float64 and no eigh; a D x D problem is no work for a CPU);
    tiny negative eigenvalues from rounding are clipped to 0.
    """
    a, b = features_a.cpu().double(), features_b.cpu().double()
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))  # (D, D)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).pow(2).sum()
    return (mean_term + cov_a.trace() + cov_b.trace() - 2 * cross).item()


def load_judge(args, device):
    """(cnn.py's trained CNN on `device`, its path): --cnn-weights, else cnn.pt in --out-dir;
    (None, path), and a line saying so, when no file was named and none is there."""
    path = Path(args.cnn_weights or Path(args.out_dir) / f"{KIND}.pt")
    if not path.exists() and not args.cnn_weights:
        print(f"sample quality skipped: no cnn.py weights at {path} (run python cnn.py first)")
        return None, path
    model = CNN().to(device)
    common.load_weights(path, KIND, {"model": model}, flag="--cnn-weights")
    return model, path


@torch.no_grad()
def features_and_predictions(model, x, batch_size=1000):
    """The 256-d penultimate features and the predicted class of each image: (N, 256), (N,)."""
    model.eval()
    features = torch.cat([model.features(x[idx])
                          for idx in common.batch_indices(len(x), batch_size, x.device)])
    return features, model.classifier(features).argmax(1)


def real_floor(model, real_train, test_features, n, seed):
    """The Fréchet distance between n real training images (a draw seeded by `seed`) and the test
    images' features: the best a generator can score at n samples (fewer samples score higher)."""
    chosen = torch.randperm(len(real_train), generator=torch.Generator().manual_seed(seed))[:n]
    features, _ = features_and_predictions(model, real_train[chosen.to(real_train.device)])
    return frechet_distance(features, test_features)


def sample_quality(samples, real_test, real_train, args):
    """How close generated images are to Fashion-MNIST, by the trained CNN of this script.

    frechet_distance: between the CNN features of `samples` and of the real test images (FID,
    Heusel et al. 2017, with this CNN in place of Inception: nothing can be downloaded, and its
    features are Fashion-MNIST's own). Lower is better; the floor is the distance between as many
    real training images and the test images. Also the classifier's class histogram of the samples
    and its entropy in nats (ln 10 = 2.303 for ten equally likely classes; a generator that
    collapsed onto a few classes scores lower). Compare numbers only at the same sample count.
    The CNN runs on the device of `real_test`; every float64 statistic is taken on the CPU.
    Returns {} (and says so) when the weights are absent.
    """
    model, path = load_judge(args, real_test.device)
    if model is None:
        return {}
    test_features, _ = features_and_predictions(model, real_test)
    features, predicted = features_and_predictions(model, samples.to(real_test.device))
    shares = torch.bincount(predicted.cpu(), minlength=10).double() / len(predicted)
    entropy = -(shares[shares > 0] * shares[shares > 0].log()).sum().item()
    return {"frechet_distance": frechet_distance(features, test_features),
            "frechet_floor_train_vs_test": real_floor(model, real_train, test_features, len(samples), args.seed),
            "n_generated": len(samples), "class_shares": dict(zip(common.class_names("fashion-mnist"),
                                                                   shares.tolist())),
            "class_entropy_nats": entropy, "classifier_weights": str(path)}


# ----------------------------------------------------------------------------------------------
# FIGURES
# ----------------------------------------------------------------------------------------------
def plot_history(history, out, name):
    evals = [r for r in history if "test_acc" in r]
    epochs = [r["epoch"] for r in evals]
    common.plot_curves(out / f"{name}_accuracy.png",
                       {"train": (epochs, [r["train_acc"] for r in evals]),
                        "test": (epochs, [r["test_acc"] for r in evals])},
                       xlabel="epoch", ylabel="accuracy", title="CNN on Fashion-MNIST: accuracy",
                       styles={"train": common.SPARSE, "test": common.SPARSE})
    common.plot_curves(out / f"{name}_loss.png",
                       {"train (mean over the epoch, augmented)":
                            ([r["epoch"] for r in history], [r["train_loss"] for r in history]),
                        "test": (epochs, [r["test_loss"] for r in evals])},
                       xlabel="epoch", ylabel="cross-entropy, nats per image",
                       title="CNN on Fashion-MNIST: loss", styles={"test": common.SPARSE})


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    generator = common.seed_everything(args.seed)
    out, name = common.out_dir(args), run_name(args)
    model = CNN().to(device)
    if args.load:  # read before the data, so a wrong file fails at once
        run = common.load_run(args.load, KIND, {"model": model})
    train, test = common.load_mnist_like("fashion-mnist", args.data_dir, device, args.limit)
    if not args.load:
        run = fit(model, train, test, args, generator, out / name)
    train_loss, train_acc = evaluate(model, train)
    test_loss, test_acc = evaluate(model, test)
    final = {"epochs_trained": run.history[-1]["epoch"], "train_loss": train_loss,
             "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
    plot_history(run.history, out, name)
    common.save_metrics(out / f"{name}_metrics.json", args, device, run.seconds, run.history, final,
                        weights=str(args.load or out / f"{name}.pt"), **run.provenance())
    print(f"final: train acc {train_acc:.4f} | test acc {test_acc:.4f} | "
          f"test loss {test_loss:.4f} | {run.seconds:.0f} s of training")


if __name__ == "__main__":
    common.run_main(main)
