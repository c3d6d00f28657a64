"""vgg_mnist.py: configuration A, the 32x32 input, the balanced subset, runs, --load, --resume."""
import copy
import json
import math

import matplotlib.pyplot as plt

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import vgg_mnist
from conftest import (DEVICE_FLAGS, NoHostTensors, assert_one_line_error, kill_at_call, needs_bf16,
                      record_gradients, run_script)

# Table 1 of Simonyan & Zisserman (2015), column A, written out here independently of the script
TABLE_1_A = [("conv", 64), ("pool",), ("conv", 128), ("pool",), ("conv", 256), ("conv", 256),
             ("pool",), ("conv", 512), ("conv", 512), ("pool",), ("conv", 512), ("conv", 512),
             ("pool",)]


def quick_args(data_dir, out_dir, *extra):
    """A small classifier head keeps the smoke runs fast; the conv stack is the real one."""
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "96", "--batch-size", "32", "--fc-width", "32",
            *map(str, extra)]


RUN = "vgg_mnist_e2_bs32_limit96_fc32"  # quick_args' run: named after the knobs that differ


def metrics(out_dir):
    (path,) = out_dir.glob("vgg_mnist*_metrics.json")  # the one run in out_dir, whatever its knobs
    return json.loads(path.read_text())


def without_times(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


# --- architecture --------------------------------------------------------------------------------
def describe(entry):
    if isinstance(entry, nn.MaxPool2d):
        return ("pool",)
    conv, relu = entry  # each conv entry is the conv and its ReLU
    assert isinstance(conv, nn.Conv2d) and isinstance(relu, nn.ReLU)
    return ("conv", conv.out_channels)


def test_feature_stack_is_configuration_a():
    features = vgg_mnist.VGG11().features
    assert len(features) == 13
    assert [describe(entry) for entry in features] == TABLE_1_A
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in features.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 8 and len(pools) == 5
    assert convs[0].in_channels == 1  # grey MNIST, not RGB
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert all(p.kernel_size == 2 and p.stride == 2 for p in pools)


def test_32x32_maps_to_1x1x512_and_10_logits():
    model = vgg_mnist.VGG11().eval()
    x = torch.zeros(3, 1, 32, 32)
    sides = []
    for entry in model.features:
        x = entry(x)
        sides.append(x.shape[-1])
    assert tuple(x.shape) == (3, 512, 1, 1)
    assert sides == [32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1]
    assert tuple(model.classifier(x).shape) == (3, 10)


def test_28x28_does_not_survive_five_pools():
    """The docstring's "why 32": 28 → 14 → 7 → 3 → 1, and the fifth pool has nothing to pool."""
    with pytest.raises(RuntimeError):
        vgg_mnist.VGG11().features(torch.zeros(1, 1, 28, 28))


def test_parameter_count_by_hand():
    pairs = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
             (512, 512)]
    conv = sum(9 * c_in * c_out + c_out for c_in, c_out in pairs)
    fc = (512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)
    assert sum(p.numel() for p in vgg_mnist.VGG11().parameters()) == conv + fc == 28_142_858
    narrow = sum(p.numel() for p in vgg_mnist.VGG11(fc_width=32).parameters())
    assert narrow == conv + (512 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)


def test_classification_loss_is_mean_negative_log_softmax():
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    reference = -torch.log(torch.softmax(logits.double(), 1)[torch.arange(6), labels]).mean()
    assert vgg_mnist.classification_loss(logits, labels).item() == pytest.approx(reference.item(),
                                                                                rel=1e-6)


def test_a_training_step_never_waits_for_the_host():
    """fit's step, on PyTorch's meta device, with a narrow head (--fc-width 32): an epoch's
    indices from common.batch_indices, the learning-rate schedule, train_step (forward,
    cross-entropy, backward, make_optimizer's SGD), the loss kept on the device. A CPU tensor
    meeting a device tensor, or a number read back from the device (.item()), fails here. fit
    itself cannot run on meta: its records read the accuracies back as numbers."""
    meta = torch.device("meta")
    model = vgg_mnist.VGG11(fc_width=32).to(meta)
    x, y = torch.empty(8, 1, 32, 32, device=meta), torch.zeros(8, dtype=torch.long, device=meta)
    args = vgg_mnist.parse_args(["--fc-width", "32"])
    optimizer = vgg_mnist.make_optimizer(model, args)
    batch_losses = torch.empty(2, device=meta)
    with NoHostTensors():
        batches = common.batch_indices(len(x), 4, meta, torch.Generator().manual_seed(0))
        for i, idx in enumerate(batches):
            common.set_lr(optimizer, common.cosine_lr(0.01, i, 2, warmup_steps=1))
            loss = vgg_mnist.train_step(model, optimizer, x[idx], y[idx], args, meta)
            batch_losses[i] = loss
    assert loss.shape == () and batch_losses.device == meta
    assert all(p.grad.device == meta for p in model.parameters())


# --- data ----------------------------------------------------------------------------------------
def test_balanced_subset_takes_the_same_number_of_each_class():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([50, 70, 90, 60, 80])])
    chosen = vgg_mnist.balanced_subset(labels, 0.1, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[chosen]).tolist() == [7] * 5  # round(0.1 * 350 / 5)
    assert len(chosen.unique()) == len(chosen)  # no image twice
    again = vgg_mnist.balanced_subset(labels, 0.1, torch.Generator().manual_seed(0))
    other = vgg_mnist.balanced_subset(labels, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(chosen, again) and not torch.equal(chosen, other)


def test_resize_keeps_a_constant_image_and_the_range():
    x = torch.cat([torch.full((1, 1, 28, 28), 0.25), torch.rand(4, 1, 28, 28)])
    out = vgg_mnist.resize(x, batch_size=2)  # chunks of 2 give the same result as one call
    assert tuple(out.shape) == (5, 1, 32, 32)
    assert torch.allclose(out[0], torch.full((1, 32, 32), 0.25))
    assert out.min() >= 0 and out.max() <= 1


def test_real_mnist_subset_is_600_per_class(shared_data):
    args = vgg_mnist.parse_args(["--data-dir", str(shared_data), "--subset", "0.1"])
    (train_x, train_y), (test_x, _) = vgg_mnist.prepare(args, torch.device("cpu"))
    assert torch.bincount(train_y).tolist() == [600] * 10
    assert tuple(train_x.shape) == (6000, 1, 32, 32) and tuple(test_x.shape) == (10000, 1, 32, 32)
    assert abs(train_x.mean().item()) < 1e-5  # the training set's mean pixel was subtracted


# --- runs ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_run_then_load_repeats_the_numbers(synthetic_data, tmp_path):
    trained = tmp_path / "trained"
    vgg_mnist.main(quick_args(synthetic_data, trained))
    for suffix in ("_curves.png", ".pt", ".ckpt", "_metrics.json"):
        assert (trained / f"{RUN}{suffix}").is_file(), suffix
    first = metrics(trained)
    assert [(r["epoch"], r["step"]) for r in first["history"]] == [(1, 3), (2, 6)]
    for key in ("train_acc", "test_acc", "train_loss", "test_loss", "batch_loss"):
        assert all(key in r for r in first["history"]), key

    reloaded = tmp_path / "reloaded"
    vgg_mnist.main(quick_args(synthetic_data, reloaded, "--load", trained / f"{RUN}.pt"))
    assert (reloaded / f"{RUN}_curves.png").is_file()  # --load keeps the file's own name
    assert not list(reloaded.glob("*.pt"))
    again = metrics(reloaded)
    assert again["final"] == first["final"]
    assert again["history"] == first["history"]


def test_the_loss_panel_has_a_log_axis_and_the_accuracy_panel_a_linear_one(tmp_path, monkeypatch):
    """Issue 26: a training loss of 0.0006 against a test loss of 0.07 (the memorisation the runs
    show) is visible only on a log axis; accuracy, near 1, reads on a linear one."""
    scales = {}

    def record(fig, path):
        scales.update({ax.get_ylabel(): ax.get_yscale() for ax in fig.axes})
        plt.close(fig)

    monkeypatch.setattr(common, "save_figure", record)
    history = [{"epoch": e, "step": 94 * e, "batch_loss": 1 / e, "train_loss": 10.0 ** -e,
                "test_loss": 0.07, "train_acc": 0.9, "test_acc": 0.9} for e in (1, 2, 3)]
    vgg_mnist.plot_history(history, vgg_mnist.parse_args([]), 6000, tmp_path / "run_curves.png")
    assert scales == {"accuracy (dropout off)": "linear", "cross-entropy (log scale)": "log"}


def test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults():
    """The default command keeps the committed name (reproduction); a changed knob writes beside
    it; flags that do not change the result stay out; --load keeps the loaded file's name."""
    name = lambda *flags: vgg_mnist.run_name(vgg_mnist.parse_args(list(flags)))
    assert name() == name("--device", "cpu", "--out-dir", "elsewhere", "--data-dir", "x") == "vgg_mnist"
    assert name("--subset", "0.1") == "vgg_mnist_subset0.1"  # the committed runs' names
    assert name("--epochs", "5", "--amp", "--shift", "2") == "vgg_mnist_amp_shift2"
    assert name("--subset", "0.1", "--epochs", "15") == "vgg_mnist_e15_subset0.1"
    assert name("--eval-every-batches", "20", "--fc-width", "512", "--weight-decay", "0",
                "--dropout", "0.3") == "vgg_mnist_every20_fc512_dropout0.3_wd0"
    assert name("--shift", "0", "--lr", "0.01") == "vgg_mnist"  # the defaults' values, spelled out
    assert name("--load", "runs/vgg_mnist_e1.pt", "--epochs", "9") == "vgg_mnist_e1"


@pytest.mark.slow
def test_eval_every_batches_records_within_epochs(synthetic_data, tmp_path):
    vgg_mnist.main(quick_args(synthetic_data, tmp_path, "--eval-every-batches", "2"))
    # 96 images in batches of 32: 3 minibatches per epoch, 6 in all; a record after every 2
    # minibatches of an epoch and one at each epoch's end
    assert [(r["epoch"], r["step"]) for r in metrics(tmp_path)["history"]] == [(1, 2), (1, 3),
                                                                              (2, 5), (2, 6)]


@pytest.mark.slow
@pytest.mark.parametrize("extra, spans", [
    ([], [(0, 3), (3, 6)]),                                   # one record per epoch
    (["--eval-every-batches", "2"], [(0, 2), (2, 3), (3, 5), (5, 6)]),  # never across an epoch
])
def test_batch_loss_is_the_mean_since_the_last_record(extra, spans, synthetic_data, tmp_path,
                                                      monkeypatch):
    real_loss, seen = vgg_mnist.classification_loss, []

    def recorded_loss(logits, labels):
        loss = real_loss(logits, labels)
        seen.append(loss.item())
        return loss

    monkeypatch.setattr(vgg_mnist, "classification_loss", recorded_loss)
    vgg_mnist.main(quick_args(synthetic_data, tmp_path, *extra))
    assert len(seen) == 6  # 3 minibatches in each of 2 epochs
    history = metrics(tmp_path)["history"]
    assert [r["step"] for r in history] == [end for _, end in spans]
    for record, (start, end) in zip(history, spans):
        assert record["batch_loss"] == pytest.approx(sum(seen[start:end]) / (end - start), rel=1e-6)


def test_subset_run_has_its_own_files(synthetic_data, tmp_path):
    vgg_mnist.main(quick_args(synthetic_data, tmp_path, "--subset", "0.5", "--epochs", "1"))
    # round(0.5 * 96 / 10) = 5 images of each class
    run = "vgg_mnist_e1_bs32_limit96_subset0.5_fc32"
    record = json.loads((tmp_path / f"{run}_metrics.json").read_text())
    assert record["final"]["train_images"] == 50
    assert (tmp_path / f"{run}_curves.png").is_file()
    assert [p.name for p in tmp_path.glob("*.pt")] == [f"{run}.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("extra, saved_epoch", [
    ([], 2),  # killed while recording epoch 3
    (["--shift", "2"], 2),  # the shifts' random draws continue where they stopped
    (["--eval-every-batches", "2"], 1),  # records at steps 2, 3 | 5, 6 | ...: killed at step 5,
])                                       # within epoch 2, after the checkpoint of epoch 1
def test_resume_after_a_kill_matches_an_uninterrupted_run(extra, saved_epoch, synthetic_data,
                                                          tmp_path, monkeypatch):
    vgg_mnist.main(quick_args(synthetic_data, tmp_path / "whole", "--epochs", "3", *extra))

    kill_at_call(monkeypatch, vgg_mnist, "measure", 3)
    with pytest.raises(KeyboardInterrupt):
        vgg_mnist.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "3", *extra))
    monkeypatch.undo()
    (checkpoint,) = (tmp_path / "split").glob("vgg_mnist_e3_*.ckpt")
    saved = common.load_checkpoint(checkpoint, "vgg_mnist")
    assert saved["epoch"] == saved_epoch
    vgg_mnist.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "3", "--resume", *extra))
    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    assert without_times(split["history"]) == without_times(whole["history"])
    assert split["final"] == whole["final"]


@pytest.mark.slow
def test_patience_stops_within_an_epoch_and_saves_there(synthetic_data, tmp_path, monkeypatch):
    real_measure = vgg_mnist.measure

    def never_improving(*args, **kwargs):
        record = real_measure(*args, **kwargs)
        record["test_loss"] = float(record["step"])
        return record

    monkeypatch.setattr(vgg_mnist, "measure", never_improving)
    vgg_mnist.main(quick_args(synthetic_data, tmp_path, "--eval-every-batches", "1", "--patience", "1"))
    assert [r["step"] for r in metrics(tmp_path)["history"]] == [1, 2]  # 3 minibatches an epoch
    (weights,) = tmp_path.glob("*.pt")
    assert common.load_checkpoint(weights, "vgg_mnist")["epoch"] == 1


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, phrase", [
    (["--subset", "0"], "argument --subset: must be > 0, got 0"),
    (["--subset", "1.5"], "--subset is a fraction of the training set, in (0, 1]"),
    (["--dropout", "1"], "--dropout is a probability below 1"),
    (["--fc-width", "0"], "argument --fc-width: must be > 0, got 0"),
    (["--shift", "-1"], "argument --shift: must be >= 0, got -1"),
    (["--eval-every-batches", "-5"], "argument --eval-every-batches: must be > 0, got -5"),
])
def test_bad_flags_are_refused(flags, phrase, tmp_path):
    assert_one_line_error(run_script("vgg_mnist.py", "--out-dir", tmp_path, *flags), phrase)


def test_resume_without_a_checkpoint(synthetic_data, tmp_path):
    result = run_script("vgg_mnist.py", *quick_args(synthetic_data, tmp_path), "--resume")
    assert_one_line_error(result, "--resume: no checkpoint at", f"{RUN}.ckpt")


@needs_bf16
def test_amp_trains_in_bfloat16_to_finite_losses(synthetic_data, tmp_path):
    vgg_mnist.main(quick_args(synthetic_data, tmp_path, "--epochs", "1", "--amp"))
    record = metrics(tmp_path)["history"][0]
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("batch_loss", "train_loss", "test_loss"))


def test_weights_of_another_script_are_refused(synthetic_data, tmp_path):
    foreign = tmp_path / "cnn.pt"
    common.save_checkpoint(foreign, "cnn", models={}, args={})
    result = run_script("vgg_mnist.py", *quick_args(synthetic_data, tmp_path / "out"),
                        "--load", foreign)
    assert_one_line_error(result, "holds 'cnn' weights, expected 'vgg_mnist'")


# --- the training step against a hand-written step on its objective -----------------------------
# Non-default values of every knob the step reads, so a knob the step ignores changes the numbers.
STEP_FLAGS = ["--lr", "0.05", "--momentum", "0.7", "--weight-decay", "0.01", "--dropout", "0.3",
              "--fc-width", "8"]


def mean_cross_entropy_by_hand(logits, labels):
    """The docstring's objective, L = -(1/B) Σ_b log softmax(logits_b)[y_b], from the logits."""
    return -torch.log_softmax(logits, dim=1)[torch.arange(len(labels)), labels].mean()


def sgd_by_hand(params, grads, buffers, lr, momentum, weight_decay):
    """PyTorch's SGD as its documentation writes it (dampening 0, no Nesterov): the parameters
    after one step, with `buffers` (None before the first step) updated in place:
    g = grad + weight_decay * p; b = g on the first step, momentum * b + g after; p - lr * b."""
    stepped = []
    for i, (param, grad) in enumerate(zip(params, grads)):
        g = grad + weight_decay * param
        buffers[i] = g if buffers[i] is None else momentum * buffers[i] + g
        stepped.append(param - lr * buffers[i])
    return stepped


def test_two_steps_descend_the_mean_cross_entropy_with_momentum_and_weight_decay():
    """Two calls of train_step with the optimizer make_optimizer builds equal two hand-written
    steps: the gradient of the mean cross-entropy written from the logits, with dropout on
    (the same masks: the global generator seeded alike), then SGD with --momentum and
    --weight-decay at --lr written out. The second step is where momentum shows. The reference
    network takes the script's weights before each step (ReLU kinks would turn float32
    rounding between the two into visible gradient differences by step 2)."""
    args = vgg_mnist.parse_args(STEP_FLAGS)
    torch.manual_seed(0)
    model = vgg_mnist.VGG11(args.fc_width, args.dropout)
    reference = copy.deepcopy(model)  # in training mode as well: dropout on
    optimizer = vgg_mnist.make_optimizer(model, args)
    step_grads = record_gradients(optimizer, list(model.parameters()))
    data = torch.Generator().manual_seed(1)
    buffers = [None] * len(list(reference.parameters()))
    for step in range(2):
        x, y = torch.randn(4, 1, 32, 32, generator=data), torch.randint(0, 10, (4,), generator=data)
        reference.load_state_dict(model.state_dict())
        torch.manual_seed(10 + step)  # the dropout masks
        loss = mean_cross_entropy_by_hand(reference(x), y)
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        expected = sgd_by_hand([p.detach() for p in reference.parameters()], grads, buffers,
                               args.lr, args.momentum, args.weight_decay)
        torch.manual_seed(10 + step)
        vgg_mnist.train_step(model, optimizer, x, y, args, torch.device("cpu"))
        for step_grad, grad in zip(step_grads[-1], grads):
            assert torch.allclose(step_grad, grad, rtol=1e-4, atol=1e-7)
        for param, stepped in zip(model.parameters(), expected):
            assert torch.allclose(param, stepped, rtol=1e-5, atol=1e-8)


def test_make_optimizer_is_plain_sgd_with_the_flags_values():
    """The optimizer's settings named outright (the two-step test shows their effect): SGD,
    one parameter group, --lr, --momentum and --weight-decay, no dampening, no Nesterov."""
    args = vgg_mnist.parse_args(STEP_FLAGS)
    optimizer = vgg_mnist.make_optimizer(vgg_mnist.VGG11(fc_width=8), args)
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.7, 0.01)
    assert group["dampening"] == 0 and not group["nesterov"]


def test_fit_sets_each_steps_learning_rate_by_warm_up_then_cosine(tmp_path, monkeypatch):
    """20 steps (2 epochs of 10 single-image minibatches): a linear warm-up over the first 10%
    (2 steps: peak/2, then peak), then a cosine decay from the peak towards 0 at the end, as the
    docstring states; written out here. Checks the edges: first step, the step after warm-up,
    the last step (not 0: the decay ends after it), and that the schedule spans both epochs."""
    args = vgg_mnist.parse_args(["--epochs", "2", "--batch-size", "1", "--lr", "0.2",
                                 "--fc-width", "8", "--out-dir", str(tmp_path)])
    learning_rates = []

    def recording_step(model, optimizer, inputs, labels, args, device):
        learning_rates.append([group["lr"] for group in optimizer.param_groups])
        return torch.zeros(())

    monkeypatch.setattr(vgg_mnist, "train_step", recording_step)
    x, y = torch.randn(10, 1, 32, 32), torch.arange(10)
    vgg_mnist.fit(vgg_mnist.VGG11(fc_width=8), (x, y), (x[:2], y[:2]), args, torch.device("cpu"),
                  torch.Generator().manual_seed(0), tmp_path / "vgg_mnist")
    expected = [0.2 * (k + 1) / 2 if k < 2 else 0.2 * 0.5 * (1 + math.cos(math.pi * (k - 2) / 18))
                for k in range(20)]
    assert [lrs[0] for lrs in learning_rates] == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.1) and expected[2] == pytest.approx(0.2)
    assert all(len(lrs) == 1 for lrs in learning_rates)


def shifted_by_hand(image, rows, cols, fill, pad=2):
    """image (1, 32, 32) moved by (rows, cols) pixels, what it uncovers set to `fill`."""
    padded = torch.full((1, 32 + 2 * pad, 32 + 2 * pad), fill)
    padded[:, pad:pad + 32, pad:pad + 32] = image
    return padded[:, pad + rows:pad + rows + 32, pad + cols:pad + cols + 32]


def test_the_network_sees_mean_subtracted_32x32_images_shifted_in_training_only(
        synthetic_data, tmp_path, monkeypatch):
    """A forward pre-hook on the network main builds records every input it is given. Training
    (dropout on, also after a mid-epoch record): each epoch's images, each once, each moved by
    at most --shift 2 pixels, minus the mean pixel of the resized training images. Evaluation
    (dropout off): the training and the test images, unmoved, minus that SAME constant. The
    network has the flags' --fc-width and --dropout. The reference: the raw files through
    F.interpolate, the mean taken here."""
    seen, built = [], []
    real_make_optimizer = vgg_mnist.make_optimizer

    def recording_make_optimizer(model, args):
        model.register_forward_pre_hook(
            lambda module, inputs: seen.append((module.training, inputs[0].detach().cpu().clone())))
        built.append(model)
        return real_make_optimizer(model, args)

    monkeypatch.setattr(vgg_mnist, "make_optimizer", recording_make_optimizer)
    vgg_mnist.main(quick_args(synthetic_data, tmp_path, "--epochs", "1", "--limit", "8",
                              "--batch-size", "4", "--fc-width", "8", "--dropout", "0.3",
                              "--shift", "2", "--eval-every-batches", "1"))
    (model,) = built
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3]
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [8, 8, 10]

    cpu = torch.device("cpu")
    (train_x, _), (test_x, _) = common.load_mnist_like("mnist", synthetic_data, cpu, 8)
    train_x, test_x = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
                       for x in (train_x, test_x))
    mean = train_x.mean()
    train_x, test_x = train_x - mean, test_x - mean
    # --eval-every-batches 1: a step of 4, a record (train, test), the second step (dropout on
    # again after the evaluation), the epoch's record, main's final evaluation
    assert [(training, len(x)) for training, x in seen] == [(True, 4), (False, 8), (False, 8),
                                                            (True, 4)] + [(False, 8)] * 4
    evaluated = [x for training, x in seen if not training]
    for x, expected in zip(evaluated, [train_x, test_x] * 3):
        assert torch.allclose(x, expected, atol=1e-6)

    trained_on, moved = [], 0
    for image in torch.cat([x for training, x in seen if training]):
        matches = [(i, rows, cols)
                   for i in range(8) for rows in range(-2, 3) for cols in range(-2, 3)
                   if torch.allclose(image, shifted_by_hand(train_x[i], rows, cols, train_x.min()),
                                     atol=1e-6)]
        assert matches, "a training input that is no training image moved by at most 2 pixels"
        trained_on.append(matches[0][0])
        moved += (matches[0][1], matches[0][2]) != (0, 0)
    assert sorted(trained_on) == list(range(8))  # the epoch: each training image once
    assert moved >= 4  # 24 of the 25 shifts move the image


def test_subset_is_balanced_drawn_from_the_training_split_and_sets_the_mean(synthetic_data):
    """prepare with --subset 0.5: 5 images of each class (round(0.5 * 96 / 10)), each one of the
    training split's with its own label, none twice; the test split whole; both splits minus
    the same constant, the mean pixel of the resized subset; another --seed, another subset."""
    cpu = torch.device("cpu")
    args = vgg_mnist.parse_args(["--data-dir", str(synthetic_data), "--limit", "96",
                                 "--subset", "0.5", "--seed", "3"])
    (train_x, train_y), (test_x, test_y) = vgg_mnist.prepare(args, cpu)
    (raw_train_x, raw_train_y), (raw_test_x, raw_test_y) = common.load_mnist_like(
        "mnist", synthetic_data, cpu, 96)
    resized_train, resized_test = (F.interpolate(x, size=(32, 32), mode="bilinear",
                                                 align_corners=False)
                                   for x in (raw_train_x, raw_test_x))
    subtracted = resized_test - test_x
    assert torch.equal(test_y, raw_test_y)
    assert torch.allclose(subtracted, subtracted.mean().expand_as(subtracted), atol=1e-6)

    assert torch.bincount(train_y, minlength=10).tolist() == [5] * 10
    distance = (train_x.flatten(1)[:, None] + subtracted.mean()
                - resized_train.flatten(1)[None]).abs().amax(-1)           # (50, 96)
    match = distance.argmin(1)
    assert distance.min(1).values.max() < 1e-5 and len(match.unique()) == 50
    assert torch.equal(raw_train_y[match], train_y)
    assert subtracted.mean().item() == pytest.approx(resized_train[match].mean().item(), abs=1e-6)

    other = vgg_mnist.prepare(vgg_mnist.parse_args(["--data-dir", str(synthetic_data), "--limit",
                                                    "96", "--subset", "0.5", "--seed", "4"]), cpu)
    assert not torch.equal(other[0][0], train_x)
