"""cnn.py: architecture, training run, --load, --resume, determinism, bad input, real data."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import cnn
import common
from conftest import (DEVICE_FLAGS, assert_one_line_error, guard_host_copies, kill_at_call,
                      record_gradients, run_script)


RUN = "cnn_e2_limit256"  # quick_args' run: its name carries the knobs that differ from the defaults


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "256", *map(str, extra)]


def metrics(out_dir):
    (path,) = out_dir.glob("cnn*_metrics.json")  # the one run in out_dir, whatever its knobs
    return json.loads(path.read_text())


def without_times(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


# --- architecture --------------------------------------------------------------------------------
def test_layer_output_shapes_follow_the_assignment():
    model, x = cnn.CNN(), torch.zeros(5, 1, 28, 28)
    shapes = []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, torch.nn.ReLU):
            shapes.append(tuple(x.shape))
    shapes.append(tuple(model.classifier(x).shape))
    assert shapes == [(5, 32, 14, 14), (5, 64, 7, 7), (5, 128, 4, 4), (5, 256), (5, 10)]


def test_parameter_count():
    # conv 1→32: 32·9+32; 32→64: 64·32·9+64; 64→128: 128·64·9+128; FC 2048→256; FC 256→10
    expected = (32 * 9 + 32) + (64 * 32 * 9 + 64) + (128 * 64 * 9 + 128) + (2048 * 256 + 256) + (256 * 10 + 10)
    assert sum(p.numel() for p in cnn.CNN().parameters()) == expected == 619_786


def test_every_conv_is_3x3_stride_2():
    convs = [m for m in cnn.CNN().modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) for c in convs)


def test_augment_only_flips_and_shifts():
    image = torch.zeros(64, 1, 28, 28)
    image[:, 0, 10, 6] = 1.0  # one bright pixel, far enough from every border
    out = cnn.augment(image, torch.Generator().manual_seed(0), max_shift=2)
    assert out.shape == image.shape and torch.equal(out.sum((1, 2, 3)), image.sum((1, 2, 3)))
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1], (out[:, 0] == 1).nonzero()[:, 2]
    assert ((rows - 10).abs() <= 2).all()
    assert (((cols - 6).abs() <= 2) | ((cols - 21).abs() <= 2)).all()  # 21 = 27 - 6, flipped
    assert ((cols - 21).abs() <= 2).any() and ((cols - 6).abs() <= 2).any()


def test_classification_loss_is_mean_negative_log_softmax():
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    reference = -torch.log(torch.softmax(logits, 1)[torch.arange(6), labels]).mean()
    assert cnn.classification_loss(logits, labels).item() == pytest.approx(reference.item(), rel=1e-6)


# --- the training step against a hand-written step on its objective -----------------------------
def augmented_by_hand(images, generator, max_shift=2):
    """The module docstring's augmentation written out image by image: a left-right flip where a
    uniform draw is below 1/2, then the 28x28 window cut at a random offset of 0..2·max_shift from
    the image padded with max_shift zeros on every side. Drawn as cnn.augment draws: the B flip
    draws first, then the (2, B) row and column offsets."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    offsets = torch.randint(0, 2 * max_shift + 1, (2, len(images)), generator=generator)
    padded = F.pad(images, [max_shift] * 4)                         # (B, 1, 32, 32)
    out = torch.empty_like(images)
    for b in range(len(images)):
        image = padded[b].flip(-1) if flip[b] else padded[b]      # a symmetric pad commutes with the flip
        row, col = offsets[0, b], offsets[1, b]
        out[b] = image[:, row:row + 28, col:col + 28]
    return out


def test_default_recipe_takes_one_adamw_step_on_the_cross_entropy_at_the_scheduled_rate(float64):
    """The default recipe (cosine schedule, AdamW, augmentation) with a non-default --lr and
    --weight-decay, one batch of 4 = one step per epoch, at epoch 3 of 4, against a step written
    from the docstrings: the loss -(1/B) Σ log softmax(logits)[y] on the flipped and shifted batch
    (augmented_by_hand), and AdamW's first step by hand, θ ← θ(1 - lr·wd) - lr·g/(|g| + ε) (the
    weight decay decoupled: not inside g), at the cosine rate of step 2 of 4 after one warm-up
    step: lr = peak·½(1 + cos(π·1/3)) = 0.75·peak. The gradients the optimizer sees are compared
    too, since Adam's first step keeps only the sign of g."""
    peak, weight_decay = 3e-3, 0.3
    args = cnn.parse_args(["--epochs", "4", "--batch-size", "4", "--lr", str(peak),
                           "--weight-decay", str(weight_decay)])
    assert args.schedule == "cosine" and args.augment  # the defaults under test
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    model = cnn.CNN()
    before = copy.deepcopy(model)
    optimizer = cnn.make_optimizer(model, args)
    seen = record_gradients(optimizer, list(model.parameters()))
    cnn.train_epoch(model, optimizer, (x, y), args, 3, torch.Generator().manual_seed(7))

    generator = torch.Generator().manual_seed(7)
    order = torch.randperm(4, generator=generator)
    logits = before(augmented_by_hand(x[order], generator))
    loss = -F.log_softmax(logits, 1)[torch.arange(4), y[order]].mean()
    grads = torch.autograd.grad(loss, list(before.parameters()))
    lr = peak * 0.5 * (1 + math.cos(math.pi / 3))
    assert len(seen) == 1
    for after, start, grad, grad_seen in zip(model.parameters(), before.parameters(), grads, seen[0]):
        assert torch.allclose(grad_seen, grad, rtol=1e-9, atol=1e-12)
        expected = start * (1 - lr * weight_decay) - lr * grad / (grad.abs() + 1e-8)
        assert torch.allclose(after, expected, rtol=0, atol=1e-12)


def test_cosine_schedule_rate_at_each_step_warm_up_and_decay_edges():
    """The rate in force at every optimizer step of a whole run (2 epochs of 3 batches, so 6
    steps, 3 of them warm-up), written from the docstring: a linear warm-up over the first epoch,
    peak·k/3 at its k-th step (first step peak/3, last warm-up step the peak), then a cosine from
    the peak at the step after warm-up down towards 0 at the end of the run:
    peak·½(1 + cos(π·j/3)) at the j-th step after warm-up (last step 0.25·peak)."""
    peak = 1e-2
    args = cnn.parse_args(["--epochs", "2", "--batch-size", "4", "--lr", str(peak), "--no-augment"])
    torch.manual_seed(0)
    x, y = torch.rand(12, 1, 28, 28), torch.randint(0, 10, (12,))
    model = cnn.CNN()
    optimizer = cnn.make_optimizer(model, args)
    rates = []
    optimizer.register_step_pre_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
    generator = torch.Generator().manual_seed(0)
    for epoch in (1, 2):
        cnn.train_epoch(model, optimizer, (x, y), args, epoch, generator)
    expected = [peak / 3, 2 * peak / 3, peak] + [peak * 0.5 * (1 + math.cos(math.pi * j / 3)) for j in range(3)]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert rates[0] == pytest.approx(peak / 3) and rates[3] == pytest.approx(peak)
    assert rates[-1] == pytest.approx(0.25 * peak)


def test_adamw_is_built_with_the_configured_rate_and_decoupled_weight_decay():
    """fit's optimizer: AdamW (decoupled decay, not Adam's L2 in the gradient) over every
    parameter, at --lr with --weight-decay."""
    args = cnn.parse_args(["--lr", "7e-4", "--weight-decay", "0.2"])
    model = cnn.CNN()
    optimizer = cnn.make_optimizer(model, args)
    assert type(optimizer) is torch.optim.AdamW and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lr"] == 7e-4 and group["weight_decay"] == 0.2
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]


def test_evaluate_sees_the_stored_images_unaugmented_in_eval_mode():
    """At the network's input (a forward pre-hook) evaluate passes the split exactly as stored,
    in order and in [0, 1] like training's inputs, with the model in eval mode; its numbers are
    the mean cross-entropy and the accuracy over the whole split, computed here from the logits."""
    torch.manual_seed(0)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    model = cnn.CNN()
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append((module.training, inputs[0].clone())))
    loss, accuracy = cnn.evaluate(model, (x, y), batch_size=4)
    assert [training for training, _ in seen] == [False, False]
    assert torch.equal(torch.cat([images for _, images in seen]), x)
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(-F.log_softmax(logits, 1)[torch.arange(6), y].mean().item(), rel=1e-5)
    assert accuracy == pytest.approx((logits.argmax(1) == y).sum().item() / 6)


# --- runs ----------------------------------------------------------------------------------------
def test_joint_recipe_takes_plain_adam_steps_at_a_fixed_rate():
    """--schedule constant --weight-decay 0 --no-augment (joint.py's recipe) against a loop written
    with torch.optim.Adam on the same minibatches: the same parameters after an epoch."""
    args = cnn.parse_args(["--schedule", "constant", "--weight-decay", "0", "--no-augment",
                           "--lr", "1e-3", "--batch-size", "16"])
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    model, reference = cnn.CNN(), cnn.CNN()
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    cnn.train_epoch(model, optimizer, (x, y), args, 1, torch.Generator().manual_seed(5))
    adam = torch.optim.Adam(reference.parameters(), lr=1e-3)
    reference.train()
    for idx in common.batch_indices(64, 16, x.device, torch.Generator().manual_seed(5)):
        adam.zero_grad()
        torch.nn.functional.cross_entropy(reference(x[idx]), y[idx]).backward()
        adam.step()
    assert optimizer.param_groups[0]["lr"] == 1e-3
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_smoke_run_then_load_repeats_the_numbers(synthetic_data, tmp_path):
    trained = tmp_path / "trained"
    cnn.main(quick_args(synthetic_data, trained))
    for name in ("accuracy.png", "loss.png", "metrics.json"):
        assert (trained / f"{RUN}_{name}").is_file(), name
    assert (trained / f"{RUN}.pt").is_file() and (trained / f"{RUN}.ckpt").is_file()
    first = metrics(trained)
    assert [r["epoch"] for r in first["history"]] == [1, 2]
    assert first["final"]["test_acc"] > 0.3  # synthetic classes are easy: clearly above 0.1

    reloaded = tmp_path / "reloaded"
    cnn.main(quick_args(synthetic_data, reloaded, "--load", trained / f"{RUN}.pt"))
    assert (reloaded / f"{RUN}_accuracy.png").is_file()  # --load keeps the file's own name
    assert not list(reloaded.glob("*.pt"))
    again = metrics(reloaded)
    assert again["final"] == first["final"]
    assert again["history"] == first["history"]


def test_a_run_is_named_after_the_knobs_that_differ_from_the_defaults():
    """The default command keeps the committed name (reproduction); a changed knob writes beside
    it; flags that do not change the result stay out; --load keeps the loaded file's name."""
    name = lambda *flags: cnn.run_name(cnn.parse_args(list(flags)))
    assert name() == name("--device", "cpu", "--out-dir", "elsewhere", "--data-dir", "x") == "cnn"
    assert name("--lr", "3e-3", "--epochs", "1", "--limit", "2000") == "cnn_e1_lr0.003_limit2000"
    assert name("--no-augment", "--weight-decay", "0", "--schedule", "constant") == "cnn_wd0_no-augment_constant"
    assert name("--lr", "2e-3") == "cnn"  # the default's value, spelled out
    assert name("--load", "runs/cnn_e5.pt", "--epochs", "9") == "cnn_e5"


def test_same_seed_gives_identical_metrics(synthetic_data, tmp_path):
    cnn.main(quick_args(synthetic_data, tmp_path / "a"))
    cnn.main(quick_args(synthetic_data, tmp_path / "b"))
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert without_times(a["history"]) == without_times(b["history"])
    assert a["final"] == b["final"]


def test_resume_after_a_kill_matches_an_uninterrupted_run(synthetic_data, tmp_path, monkeypatch):
    cnn.main(quick_args(synthetic_data, tmp_path / "whole", "--epochs", "3"))

    kill_at_call(monkeypatch, cnn, "train_epoch", 3)
    with pytest.raises(KeyboardInterrupt):
        cnn.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "3"))
    monkeypatch.undo()
    assert common.load_checkpoint(tmp_path / "split" / "cnn_e3_limit256.pt", "cnn")["epoch"] == 2
    cnn.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "3", "--resume"))

    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    assert without_times(split["history"]) == without_times(whole["history"])
    assert split["final"] == whole["final"]


def test_patience_stops_early(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(cnn, "evaluate", lambda model, data: (1.0, 0.5))  # a test loss that never improves
    cnn.main(quick_args(synthetic_data, tmp_path, "--epochs", "20", "--eval-every", "1",
                        "--patience", "2"))
    assert [r["epoch"] for r in metrics(tmp_path)["history"]] == [1, 2, 3]


def test_nan_loss_stops_with_epoch_and_batch(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(cnn, "classification_loss", lambda logits, labels: logits.sum() * float("nan"))
    with pytest.raises(SystemExit, match="cross_entropy loss became nan at epoch 1, batch 1"):
        cnn.main(quick_args(synthetic_data, tmp_path))
    assert not list(tmp_path.glob("*.pt"))  # nothing non-finite was saved


# --- devices, proven on PyTorch's meta device (shapes without values) ---------------------------
def test_training_step_runs_on_the_device_alone(monkeypatch):
    """train_epoch with the model and the data on the meta device: a CPU tensor left in the step
    fails (meta and CPU tensors do not mix), so does an .item() (a meta tensor has no value to
    read). The CPU-drawn order, flips and shifts reach the device through common.to_device
    (pinned and non-blocking on CUDA), not through a .to() that makes the host wait."""
    meta = torch.device("meta")
    model = cnn.CNN().to(meta)
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.rand(8, 1, 28, 28, device=meta), torch.randint(0, 10, (8,), device=meta)
    args = cnn.parse_args(["--batch-size", "4", "--epochs", "1"])
    copies = guard_host_copies(monkeypatch)
    losses = cnn.train_epoch(model, optimizer, (x, y), args, 1, torch.Generator().manual_seed(0))
    assert losses.device == meta and losses.shape == (2,)
    assert all(p.grad.device == meta for p in model.parameters())
    assert copies == [(8,)] + [(4,), (2, 4)] * 2  # the order once; flips and shifts every step


# --- bad input: one line on stderr, non-zero exit, no traceback ---------------------------------
@pytest.mark.parametrize("flags, phrase", [
    (["--epochs", "0"], "argument --epochs: must be > 0, got 0"),
    (["--epochs", "-3"], "argument --epochs: must be > 0, got -3"),
    (["--batch-size", "0"], "argument --batch-size: must be > 0, got 0"),
    (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
    (["--epochs", "ten"], "argument --epochs: expected an integer, got 'ten'"),
    (["--device", "tpu"], "--device: invalid choice"),
])
def test_bad_flags_are_refused(flags, phrase, tmp_path):
    assert_one_line_error(run_script("cnn.py", "--out-dir", tmp_path, *flags), phrase)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(synthetic_data, tmp_path):
    result = run_script("cnn.py", *quick_args(synthetic_data, tmp_path), "--device", "cuda")
    assert_one_line_error(result, "--device cuda: no CUDA device")


def test_missing_data_and_no_network(tmp_path):
    result = run_script("cnn.py", "--data-dir", tmp_path / "empty", "--out-dir", tmp_path,
                        *DEVICE_FLAGS)
    assert_one_line_error(result, "Fashion-MNIST is not in", "train-images-idx3-ubyte",
                          str(tmp_path / "empty" / "FashionMNIST" / "raw"))


def test_bad_weights_files(synthetic_data, tmp_path):
    not_weights = tmp_path / "notes.pt"
    not_weights.write_text("these are not weights")
    other_script = tmp_path / "vae.pt"
    common.save_checkpoint(other_script, "vae_conv", model={})
    other_arch = tmp_path / "wide.pt"
    wide = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3))
    common.save_checkpoint(other_arch, "cnn", models={"model": wide.state_dict()}, history=[],
                           seconds=0.0, epoch=1)
    cases = [(tmp_path / "missing.pt", "no weights file at"),
             (not_weights, "is not a weights file"),
             (other_script, "holds 'vae_conv' weights, expected 'cnn'"),
             (other_arch, "do not fit the 'cnn' model")]
    for path, phrase in cases:
        result = run_script("cnn.py", *quick_args(synthetic_data, tmp_path / "out"), "--load", path)
        assert_one_line_error(result, phrase)


def test_resume_without_a_checkpoint(synthetic_data, tmp_path):
    result = run_script("cnn.py", *quick_args(synthetic_data, tmp_path), "--resume")
    assert_one_line_error(result, "--resume: no checkpoint at")


# --- real data -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_run_on_real_fashion_mnist_beats_chance(shared_data, tmp_path):
    cnn.main(["--data-dir", str(shared_data), "--out-dir", str(tmp_path), *DEVICE_FLAGS,
              "--epochs", "2", "--limit", "3000"])
    assert metrics(tmp_path)["final"]["test_acc"] > 0.5  # chance is 0.1
