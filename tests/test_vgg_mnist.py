"""vgg_mnist.py: configuration A, the 32x32 input, the balanced subset, runs, --load, --resume."""
import json

import pytest
import torch
import torch.nn as nn

import common
import vgg_mnist
from conftest import DEVICE_FLAGS, NoHostTensors, assert_one_line_error, run_script

# Table 1 of Simonyan & Zisserman (2015), column A, written out here independently of the script
TABLE_1_A = [("conv", 64), ("pool",), ("conv", 128), ("pool",), ("conv", 256), ("conv", 256),
             ("pool",), ("conv", 512), ("conv", 512), ("pool",), ("conv", 512), ("conv", 512),
             ("pool",)]


def quick_args(data_dir, out_dir, *extra):
    """A small classifier head keeps the smoke runs fast; the conv stack is the real one."""
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "96", "--batch-size", "32", "--fc-width", "32",
            *map(str, extra)]


def metrics(out_dir):
    return json.loads((out_dir / "vgg_mnist_metrics.json").read_text())


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
    indices from common.batch_indices, the learning-rate schedule, forward, cross-entropy,
    backward, SGD with momentum and weight decay, the loss kept on the device. A CPU tensor
    meeting a device tensor, or a number read back from the device (.item()), fails here. fit
    itself cannot run on meta: its records read the accuracies back as numbers."""
    meta = torch.device("meta")
    model = vgg_mnist.VGG11(fc_width=32).to(meta)
    x, y = torch.empty(8, 1, 32, 32, device=meta), torch.zeros(8, dtype=torch.long, device=meta)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    batch_losses = torch.empty(2, device=meta)
    with NoHostTensors():
        batches = common.batch_indices(len(x), 4, meta, torch.Generator().manual_seed(0))
        for i, idx in enumerate(batches):
            common.set_lr(optimizer, common.cosine_lr(0.01, i, 2, warmup_steps=1))
            loss = vgg_mnist.classification_loss(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batch_losses[i] = loss.detach()
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
def test_smoke_run_then_load_repeats_the_numbers(synthetic_data, tmp_path):
    trained = tmp_path / "trained"
    vgg_mnist.main(quick_args(synthetic_data, trained))
    for name in ("vgg_mnist_curves.png", "vgg_mnist.pt", "vgg_mnist.ckpt", "vgg_mnist_metrics.json"):
        assert (trained / name).is_file(), name
    first = metrics(trained)
    assert [(r["epoch"], r["step"]) for r in first["history"]] == [(1, 3), (2, 6)]
    for key in ("train_acc", "test_acc", "train_loss", "test_loss", "batch_loss"):
        assert all(key in r for r in first["history"]), key

    reloaded = tmp_path / "reloaded"
    vgg_mnist.main(quick_args(synthetic_data, reloaded, "--load", trained / "vgg_mnist.pt"))
    assert (reloaded / "vgg_mnist_curves.png").is_file() and not (reloaded / "vgg_mnist.pt").exists()
    again = metrics(reloaded)
    assert again["final"] == first["final"]
    assert again["history"] == first["history"]


def test_eval_every_batches_records_within_epochs(synthetic_data, tmp_path):
    vgg_mnist.main(quick_args(synthetic_data, tmp_path, "--eval-every-batches", "2"))
    # 96 images in batches of 32: 3 minibatches per epoch, 6 in all; a record after every 2
    # minibatches of an epoch and one at each epoch's end
    assert [(r["epoch"], r["step"]) for r in metrics(tmp_path)["history"]] == [(1, 2), (1, 3),
                                                                              (2, 5), (2, 6)]


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
    record = json.loads((tmp_path / "vgg_mnist_subset0.5_metrics.json").read_text())
    assert record["final"]["train_images"] == 50
    assert (tmp_path / "vgg_mnist_subset0.5_curves.png").is_file()
    assert (tmp_path / "vgg_mnist_subset0.5.pt").is_file() and not (tmp_path / "vgg_mnist.pt").exists()


@pytest.mark.parametrize("extra, saved_epoch", [
    ([], 2),  # killed while recording epoch 3
    (["--shift", "2"], 2),  # the shifts' random draws continue where they stopped
    (["--eval-every-batches", "2"], 1),  # records at steps 2, 3 | 5, 6 | ...: killed at step 5,
])                                       # within epoch 2, after the checkpoint of epoch 1
def test_resume_after_a_kill_matches_an_uninterrupted_run(extra, saved_epoch, synthetic_data,
                                                          tmp_path, monkeypatch):
    vgg_mnist.main(quick_args(synthetic_data, tmp_path / "whole", "--epochs", "3", *extra))

    real_measure, calls = vgg_mnist.measure, []

    def killed_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(vgg_mnist, "measure", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        vgg_mnist.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "3", *extra))
    monkeypatch.undo()
    saved = common.load_checkpoint(tmp_path / "split" / "vgg_mnist.ckpt", "vgg_mnist")
    assert saved["epoch"] == saved_epoch
    vgg_mnist.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "3", "--resume", *extra))
    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    assert without_times(split["history"]) == without_times(whole["history"])
    assert split["final"] == whole["final"]


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
    assert_one_line_error(result, "--resume: no checkpoint at", "vgg_mnist.ckpt")


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
