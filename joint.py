"""Assignment A, task 3: does a VAE objective help the CNN classify Fashion-MNIST?

--mode joint     vae.py's conv VAE with a softmax layer on its encoding (the mean μ), trained on
                 ce_weight·CE + recon_weight·recon + kl_weight·KL.
--mode pretrain  vae.py's trained conv VAE (--vae-weights), its decoder replaced by a softmax
                 layer on μ, trained with the labels two ways: the encoder frozen (a linear
                 classifier on μ) and fine-tuned.
--sweep-ce W,... one joint model per cross-entropy weight: is the classification term drowned by
                 the reconstruction (~224 nats per image against ~0.3)? Test accuracy and
                 reconstruction against the weight, beside the CNN runs of --cnn-metrics.
Every mode trains with plain Adam at a fixed rate and no augmentation, so they differ only in
their objective; accuracies at epoch 1, every --eval-every epochs and the last. Each mode ends
with a comparison of every model measured so far: cnn.py's CNN, the joint model, and the two
pretrained classifiers.

Page: docs/joint.md (what it does, results, answers, every flag)
Run: python joint.py --mode pretrain --data-dir ../shared/data   (after python vae.py --arch conv)
"""
import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import common


PRETRAINED = ("frozen", "finetuned")  # the two classifiers of --mode pretrain, in training order
RECON_UNITS = {"bce": "nats per image", "mse": "squared error per image"}  # the loss figure's labels

LOAD_HELP = ("skip training: load one weights file per model the mode trains, in its order (--mode "
             "pretrain: frozen, then fine-tuned), and redo the figures and metrics on the data given now")


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    common.add_common_args(parser, epochs=30, batch_size=128, lr=1e-3, load_help=LOAD_HELP)
    parser.add_argument("--mode", choices=["joint", "pretrain"], default="joint",
                        help="joint: one combined loss; pretrain: vae.py's VAE first, classifier after")
    parser.add_argument("--ce-weight", type=common.nonnegative_float, default=1.0,
                        help="weight of the classification cross-entropy (joint mode)")
    parser.add_argument("--recon-weight", type=common.nonnegative_float, default=1.0,
                        help="weight of the reconstruction term (joint mode)")
    parser.add_argument("--kl-weight", type=common.nonnegative_float, default=1.0,
                        help="weight of the KL term (joint mode)")
    parser.add_argument("--recon", choices=["bce", "mse"], default="bce",
                        help="reconstruction loss, summed over pixels")
    parser.add_argument("--latent-dim", type=common.positive_int, default=256, help="length of z")
    parser.add_argument("--eval-every", type=common.positive_int, default=10,
                        help="measure accuracies every N epochs (and at the first and last)")
    parser.add_argument("--sweep-ce", type=common.number_list(common.positive_float), metavar="W1,W2,...",
                        help="joint mode: one model per --ce-weight (same seed), and a figure of "
                             "their test accuracy and reconstruction against the weight")
    parser.add_argument("--cnn-metrics", nargs="+", metavar="FILE",
                        help="--sweep-ce: cnn.py metrics files whose test accuracy the figure "
                             "shows as reference lines (default: cnn_metrics.json in --out-dir, "
                             "if there)")
    parser.add_argument("--vae-weights", metavar="FILE",
                        help="pretrain: the weights of `python vae.py --arch conv` "
                             "(default: vae_conv.pt in --out-dir)")
    parser.add_argument("--replot", metavar="METRICS",
                        help="no data, no model: redraw the loss and accuracy figures of the joint "
                             "run that wrote this <run>_metrics.json from its history (for a run "
                             "whose weights are not kept)")
    args = parser.parse_args(argv)
    if args.replot and (args.load or args.resume or args.sweep_ce or args.mode != "joint"):
        parser.error("--replot redraws one joint run from its metrics file: no --load, --resume, "
                     "--sweep-ce or --mode pretrain")
    if args.sweep_ce and args.mode != "joint":
        parser.error("--sweep-ce sweeps the joint model's loss: it needs --mode joint")
    if args.sweep_ce and args.ce_weight != parser.get_default("ce_weight"):
        parser.error("--sweep-ce sets each member's --ce-weight: give one or the other")
    models = len(PRETRAINED) if args.mode == "pretrain" else len(args.sweep_ce or [1])
    common.check_common_args(parser, args, load_files=models, sweep=bool(args.sweep_ce))
    return args


# ----------------------------------------------------------------------------------------------
# MODELS (the conv VAE is vae.py's, copied so that this file reads alone; same parameter names,
# so vae.py's weights load into it)
# ----------------------------------------------------------------------------------------------
def reparameterize(mu, logvar, generator):
    """z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2014, Sec. 2.4); ε from the CPU generator, so
    runs repeat on any device."""
    eps = common.to_device(torch.randn(mu.shape, generator=generator), mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


class ConvVAE(nn.Module):
    """Encoder as cnn.py (28 → 14 → 7 → 4) → μ, log σ² of length z; the decoder mirrors it."""

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
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 2048), nn.ReLU(),                 # (B, 2048)
            nn.Unflatten(1, (128, 4, 4)),                           # (B, 128, 4, 4)
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1), nn.ReLU(),                    # (B, 64, 7, 7)
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),   # (B, 32, 14, 14)
            nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1),               # (B, 1, 28, 28) logits
        )

    def encode(self, x):  # (B, 1, 28, 28) -> μ, log σ²: (B, z) each
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def forward(self, x, generator):
        mu, logvar = self.encode(x)
        return self.decoder(reparameterize(mu, logvar, generator)), mu, logvar


class JointVAE(nn.Module):
    """The VAE plus a softmax layer on the encoding μ: head(μ) → (B, 10) logits."""

    def __init__(self, latent_dim=256):
        super().__init__()
        self.vae = ConvVAE(latent_dim)
        self.head = nn.Linear(latent_dim, 10)

    def classify(self, x):  # (B, 1, 28, 28) -> (B, 10) logits from the mean, no sampling
        return self.head(self.vae.encode(x)[0])


# ----------------------------------------------------------------------------------------------
# LOSSES
# ----------------------------------------------------------------------------------------------
def reconstruction_loss(logits, x, kind):
    """bce: -Σ_pixels [x log σ(l) + (1 - x) log(1 - σ(l))]; mse: Σ_pixels (σ(l) - x)².
    Summed over the 784 pixels, averaged over the batch."""
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


def joint_terms(model, x, y, generator, args):
    """The combined objective of task 3, each term reported separately:
    total = ce_weight·CE(head(μ), y) + recon_weight·recon + kl_weight·KL."""
    logits, mu, logvar = model.vae(x, generator)
    terms = {"ce": classification_loss(model.head(mu), y),
             "recon": reconstruction_loss(logits, x, args.recon),
             "kl": kl_divergence(mu, logvar)}
    terms["total"] = (args.ce_weight * terms["ce"] + args.recon_weight * terms["recon"]
                      + args.kl_weight * terms["kl"])
    return terms


def trainable_parameters(model, variant):
    """What a pretrained classifier trains: "frozen", the softmax layer alone on fixed features (a
    linear classifier on μ, the VAE's code); "finetuned", the encoder, the μ layer and the
    softmax layer (the decoder and the log-variance layer, which CE(head(μ)) never reaches, stay
    out)."""
    if variant == "frozen":
        model.vae.requires_grad_(False)
        return model.head.parameters()
    return [*model.vae.encoder.parameters(), *model.vae.to_mu.parameters(), *model.head.parameters()]


def classifier_terms(model, x, y, generator, args):
    """Pretrained classifier, frozen or fine-tuned: total = CE(head(μ), y)."""
    terms = {"ce": classification_loss(model.classify(x), y)}
    terms["total"] = terms["ce"]
    return terms


# ----------------------------------------------------------------------------------------------
# TRAINING
# ----------------------------------------------------------------------------------------------
def train_epoch(model, loss_terms, optimizer, x, y, args, desc, generator):
    """One pass minimising loss_terms(...)["total"]; every term per batch (device tensors)."""
    model.train()
    n_batches = common.num_batches(len(x), args.batch_size)
    per_batch = {}
    batches = common.batch_indices(len(x), args.batch_size, x.device, generator)
    for i, idx in enumerate(common.progress(batches, n_batches, desc)):
        with common.autocast(args, x.device):
            terms = loss_terms(model, x[idx], y[idx], generator, args)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        for name, value in terms.items():
            per_batch.setdefault(name, torch.empty(n_batches, device=x.device))[i] = value.detach()
    return per_batch


@torch.no_grad()
def evaluate(model, loss_terms, x, y, args, batch_size=1000):
    """Mean loss terms and accuracy of head(μ) over a split, in eval mode; z is sampled with a
    fixed-seed generator so --load reproduces the numbers exactly."""
    model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    sums = {}  # each term summed over the examples, and the correct predictions ("acc")
    for idx in common.batch_indices(len(x), batch_size, x.device):
        batch = {name: value * len(idx)  # batch means back to sums, so a short last batch weighs less
                 for name, value in loss_terms(model, x[idx], y[idx], generator, args).items()}
        batch["acc"] = (model.classify(x[idx]).argmax(1) == y[idx]).sum().float()  # correct predictions
        sums = {name: sums.get(name, 0) + value for name, value in batch.items()}
    totals = torch.stack(list(sums.values())).tolist()  # every sum in one read
    return {name: total / len(x) for name, total in zip(sums, totals)}


def final_numbers(model, loss_terms, data, args, run):
    """The final block: epochs trained, train accuracy, and every test term and the test accuracy."""
    (train_x, train_y), (test_x, test_y) = data
    train = evaluate(model, loss_terms, train_x, train_y, args)
    test = evaluate(model, loss_terms, test_x, test_y, args)
    return {"epochs_trained": run.history[-1]["epoch"], "train_acc": train["acc"],
            **{f"test_{k}": v for k, v in test.items()}}


def fit(model, loss_terms, data, args, stem, kind, generator, trainable):
    """Minimise loss_terms(...)["total"] over the `trainable` parameters for args.epochs, or until
    the test total has not improved for --patience evaluations; <stem>.ckpt and <stem>.pt (of
    `kind`, the model's identity: "joint", "joint_pretrain_frozen") after every epoch. Returns
    the Run."""
    (train_x, train_y), (test_x, test_y) = data
    optimizer = torch.optim.Adam(trainable, lr=args.lr)
    run = common.Run(args, stem, kind, {"model": model}, {"optimizer": optimizer}, generator)
    for epoch in range(run.done + 1, args.epochs + 1):
        per_batch = train_epoch(model, loss_terms, optimizer, train_x, train_y, args,
                                f"{kind} epoch {epoch}", generator)
        common.check_finite(epoch, run.weights_path, **per_batch)
        record = {f"train_{k}": v.mean().item() for k, v in per_batch.items()}
        if epoch == 1 or epoch % args.eval_every == 0 or epoch == args.epochs:
            record["train_acc"] = evaluate(model, loss_terms, train_x, train_y, args)["acc"]
            record.update({f"test_{k}": v for k, v in
                           evaluate(model, loss_terms, test_x, test_y, args).items()})
        run.log(epoch, record)
        run.save(epoch)
        if common.stop_early(run.history, "test_total", args.patience):
            break
    return run


# ----------------------------------------------------------------------------------------------
# RUN NAMES: a changed knob writes beside the committed runs, never over them
# ----------------------------------------------------------------------------------------------
TAGS = {"ce_weight": "ce", "recon_weight": "recon", "kl_weight": "kl", "recon": "", "latent_dim": "z",
        "eval_every": "eval", "vae_weights": ""}
JOINT_LOSS = ("ce_weight", "recon_weight", "kl_weight", "recon")  # knobs the pretrain mode never reads


def run_name(args, base, skip=(), always=()):
    """`base` plus a tag per knob that differs from the defaults (common.run_name): joint_kl0.5,
    joint_pretrain_frozen_e5, joint_amp_ce10. The mode is in `base`; --sweep-ce and
    --cnn-metrics stay out (a sweep names its members; reference lines change no number);
    --vae-weights is named by its file's stem when that is not vae_conv. `skip`: knobs the
    model does not read; `always`: knobs named even at their default (a sweep's own)."""
    values = {**vars(args), "vae_weights": Path(args.vae_weights or "vae_conv").stem}
    defaults = {**vars(parse_args([])), "vae_weights": "vae_conv", **dict.fromkeys(always)}
    return common.run_name(base, argparse.Namespace(**values), defaults, TAGS,
                           ("mode", "sweep_ce", "cnn_metrics", "replot", *skip))


def model_names(args):
    """{model: its files' name} for the three models this command's knobs name: "joint" (which
    reads no --vae-weights) and the PRETRAINED classifiers (which read no joint-loss knob); with
    --load, the models this mode loads keep their files' own names."""
    names = {"joint": run_name(args, "joint", skip=("vae_weights",)),
             **{v: run_name(args, f"joint_pretrain_{v}", skip=JOINT_LOSS) for v in PRETRAINED}}
    if args.load:
        loaded = ["joint"] if args.mode == "joint" else PRETRAINED
        files = [args.load] if args.mode == "joint" else args.load
        names.update({model: Path(file).stem for model, file in zip(loaded, files)})
    return names


# ----------------------------------------------------------------------------------------------
# FIGURES AND METRICS
# ----------------------------------------------------------------------------------------------
def plot_bars(path, values, ylabel, title, ylim=None):
    """values: {label: number}, one labelled bar each (e.g. test accuracy per model). A bar's
    length is its value, so the axis starts at 0 (a cut axis makes small gaps look large)."""
    fig, ax = plt.subplots(figsize=(1.6 * len(values) + 2, 4))
    bars = ax.bar(list(values), list(values.values()), color=plt.get_cmap("tab10").colors[:len(values)])
    ax.bar_label(bars, fmt="%.4f")
    ax.set(ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.tick_params(axis="x", labelsize="small")
    common.save_figure(fig, path)


def accuracy_figure(history, args, name):
    """Train and test accuracy of the softmax on μ, at the epochs they were measured."""
    evals = [r for r in history if "test_acc" in r]
    epochs = [r["epoch"] for r in evals]
    common.plot_curves(Path(args.out_dir) / f"{name}_accuracy.png",
                       {"train": (epochs, [r["train_acc"] for r in evals]),
                        "test": (epochs, [r["test_acc"] for r in evals])},
                       xlabel="epoch", ylabel="accuracy of the softmax on μ",
                       title=f"{name} on Fashion-MNIST: accuracy",
                       styles={"train": common.SPARSE, "test": common.SPARSE})


def loss_figure(history, args, name):
    """The joint model's three loss terms, unweighted, per epoch (train: the epoch's mean) and at
    each evaluation (test)."""
    evals = [r for r in history if "test_ce" in r]
    panels = {ylabel: {"train (epoch mean)": ([r["epoch"] for r in history], [r[f"train_{key}"] for r in history]),
                       "test": ([r["epoch"] for r in evals], [r[f"test_{key}"] for r in evals])}
              for key, ylabel in (("ce", "cross-entropy, nats per image"),
                                  ("recon", f"reconstruction ({args.recon}), {RECON_UNITS[args.recon]}"),
                                  ("kl", "KL(q(z|x) || N(0, I)), nats per image"))}
    common.plot_panels(Path(args.out_dir) / f"{name}_loss.png", panels, xlabel="epoch",
                       title=f"{name}: loss terms per example (unweighted; CE weight {args.ce_weight:g})",
                       styles={"test": common.SPARSE})


def finish(model, loss_terms, data, args, name, run, **extra):
    """Final numbers, accuracy figure and metrics JSON of one trained (or loaded) model."""
    final = final_numbers(model, loss_terms, data, args, run)
    accuracy_figure(run.history, args, name)
    common.save_metrics(Path(args.out_dir) / f"{name}_metrics.json", args, data[0][0].device,
                        run.seconds, run.history, final, **run.provenance(), **extra)
    print(f"{name}: train acc {final['train_acc']:.4f} | test acc {final['test_acc']:.4f}")
    return final


# ----------------------------------------------------------------------------------------------
# EXPERIMENTS
# ----------------------------------------------------------------------------------------------
def run_joint(args, data, generator, name=None):
    """Train (or --load) one joint model; its figures and metrics, named `name` (default: after
    the knobs, model_names). Returns its final block."""
    name = name or model_names(args)["joint"]
    model = JointVAE(args.latent_dim).to(data[0][0].device)
    if args.load:
        run = common.load_run(args.load, "joint", {"model": model})
    else:
        run = fit(model, joint_terms, data, args, Path(args.out_dir) / name, "joint", generator,
                  model.parameters())
    final = finish(model, joint_terms, data, args, name, run)
    loss_figure(run.history, args, name)
    return final


def run_ce_sweep(args, data):
    """One joint model per cross-entropy weight, each from the same seed (with --load, one
    weights file per weight, in the sweep's order); their test accuracy and reconstruction
    against the weight, beside the CNN runs of --cnn-metrics. A member is named after its own
    knobs, its weight always (joint_amp_ce10); the sweep's files joint_sweep_ce plus the knobs."""
    out, finals = Path(args.out_dir), {}
    for i, weight in enumerate(args.sweep_ce):
        member = argparse.Namespace(**{**vars(args), "ce_weight": weight, "sweep_ce": None,
                                       "load": args.load[i] if args.load else None})
        name = (Path(member.load).stem if member.load
                else run_name(member, "joint", skip=("vae_weights",), always=("ce_weight",)))
        finals[weight] = run_joint(member, data, common.seed_everything(args.seed), name)
    weights = list(finals)
    fig, (acc, recon) = plt.subplots(1, 2, figsize=(11, 5))
    acc.plot(weights, [finals[w]["test_acc"] for w in weights], marker="o", label="joint model")
    for label, value in cnn_references(args).items():
        acc.axhline(value, linestyle="--", color=f"C{len(acc.lines)}", label=label)
    recon.plot(weights, [finals[w]["test_recon"] for w in weights], marker="o", label="joint model")
    for ax, ylabel in ((acc, "test accuracy"), (recon, f"test reconstruction ({args.recon}, per image)")):
        ax.set(xscale="log", ylabel=ylabel,
               xlabel=f"weight of the cross-entropy (reconstruction weighted {args.recon_weight:g}, "
                      f"KL {args.kl_weight:g})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18))  # below: no point hidden
    fig.suptitle(f"joint model, {args.epochs} epochs: what the classification term's weight buys")
    name = run_name(args, "joint_sweep_ce", skip=("vae_weights",))
    common.save_figure(fig, out / f"{name}.png")
    common.write_json(out / f"{name}.json", {f"{w:g}": finals[w] for w in weights})


def cnn_references(args):
    """{label: test accuracy} of the cnn.py runs named by --cnn-metrics (default: cnn_metrics.json
    in --out-dir, skipped when absent), each labelled by its training recipe."""
    paths = args.cnn_metrics or [p for p in [Path(args.out_dir) / "cnn_metrics.json"] if p.is_file()]
    references = {}
    for path in map(Path, paths):
        try:
            record = json.loads(path.read_text())
            recipe, accuracy = record["args"], float(record["final"]["test_acc"])
            optimizer = f"AdamW, weight decay {recipe['weight_decay']:g}" if recipe["weight_decay"] else "Adam"
            label = (f"CNN: {optimizer}, {recipe.get('schedule', 'cosine')} lr {recipe['lr']:g}, "
                     f"{'augmented' if recipe['augment'] else 'no augmentation'}")
        except (OSError, ValueError, KeyError, TypeError):  # absent, not JSON, or another script's
            common.fail(f"--cnn-metrics: {path} is not a cnn.py metrics file with a final test_acc")
        references[label] = accuracy
    return references


def pretrained_vae_path(args):
    """vae.py's conv VAE weights, which --mode pretrain starts from; absent is one line giving
    the command that writes them."""
    path = Path(args.vae_weights or Path(args.out_dir) / "vae_conv.pt")
    return common.require_file(path, "--vae-weights", "python vae.py --arch conv "
                               f"--data-dir {args.data_dir} --out-dir {path.parent}")


def run_pretrain(args, data, names=None):
    """The pretrained VAE's encoder under a softmax layer on μ, trained with the labels with the
    encoder frozen and fine-tuned, each from the same seed, named by `names` (default:
    model_names). With --load, args.load holds their two weights files (frozen, then
    fine-tuned) and no VAE is needed."""
    out, device, names = Path(args.out_dir), data[0][0].device, names or model_names(args)
    vae_path = None if args.load else pretrained_vae_path(args)
    for i, variant in enumerate(PRETRAINED):
        kind, name = f"joint_pretrain_{variant}", names[variant]
        generator = common.seed_everything(args.seed)
        model = JointVAE(args.latent_dim).to(device)  # the decoder is kept but never used again
        if args.load:
            run, extra = common.load_run(args.load[i], kind, {"model": model}), {}
        else:
            vae = common.load_weights(vae_path, "vae_conv", {"model": model.vae}, flag="--vae-weights")
            print(f"pretrained VAE: {vae_path} ({vae['epoch']} epochs of vae.py) for {kind}")
            run = fit(model, classifier_terms, data, args, out / name, kind, generator,
                      trainable_parameters(model, variant))
            extra = {"vae_weights": str(vae_path)}
        finish(model, classifier_terms, data, args, name, run, **extra)


def compare(args, names=None):
    """Test accuracy of every model measured so far in --out-dir under this command's knobs
    (`names`, default model_names; cnn.py's default run), as a figure and a JSON table named
    joint_comparison plus the knobs."""
    out, table, names = Path(args.out_dir), {}, names or model_names(args)
    for label, name in (("CNN (cnn.py)", "cnn"), ("joint", names["joint"]),
                        ("pretrained, frozen", names["frozen"]),
                        ("pretrained, fine-tuned", names["finetuned"])):
        path = out / f"{name}_metrics.json"
        if not path.is_file():
            print(f"comparison: {path} not found, so {label} is left out (run it to include it)")
            continue
        try:
            table[label] = float(json.loads(path.read_text())["final"]["test_acc"])
        except (ValueError, KeyError, TypeError):  # damaged, or not a metrics file of ours
            print(f"comparison: {path} is not a metrics file with a final test_acc, so {label} "
                  "is left out (run it again to include it)")
    if table:
        name = run_name(args, "joint_comparison")
        plot_bars(out / f"{name}.png", table, ylabel="test accuracy",
                  title="Fashion-MNIST test accuracy", ylim=(0, 1))
        common.write_json(out / f"{name}.json", table)
    for label, accuracy in table.items():
        print(f"{label:>24}: {accuracy:.4f}")


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device, args.deterministic)
    common.check_amp(args, device)
    generator = common.seed_everything(args.seed)
    common.out_dir(args)
    if args.replot:  # a run whose weights are not kept: its curves from its metrics file
        metrics, name = common.read_metrics(args.replot, "train_ce", "a joint run")
        common.use_run_args(args, {"args": metrics.get("trained_with") or metrics["args"]},
                            ("recon", "ce_weight"), args.replot)
        accuracy_figure(metrics["history"], args, name)
        return loss_figure(metrics["history"], args, name)
    data = common.load_mnist_like("fashion-mnist", args.data_dir, device, args.limit)
    if args.sweep_ce:
        run_ce_sweep(args, data)
        return
    names = model_names(args)
    if args.mode == "joint":
        run_joint(args, data, generator, names["joint"])
    else:
        run_pretrain(args, data, names)
    compare(args, names)


if __name__ == "__main__":
    common.run_main(main)
