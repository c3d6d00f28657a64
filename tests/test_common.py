"""common.py: data, batching, device, checkpoints, schedules, guards and figures."""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

import common
from conftest import ROOT, write_galaxies


# --- data ---------------------------------------------------------------------------------------
def test_load_mnist_like_gives_device_tensors_in_unit_range(synthetic_data):
    (train_x, train_y), (test_x, test_y) = common.load_mnist_like(
        "fashion-mnist", synthetic_data, torch.device("cpu"))
    assert train_x.shape == (512, 1, 28, 28) and test_x.shape == (256, 1, 28, 28)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert 0 <= train_x.min() and train_x.max() <= 1
    # independent read of the same file: torchvision's own dataset, pixel for pixel
    reference = torchvision.datasets.FashionMNIST(synthetic_data, train=False)
    assert torch.equal(test_x[:, 0], reference.data.float() / 255)
    assert torch.equal(test_y, reference.targets)


def test_limit_keeps_the_first_examples(synthetic_data):
    (full_x, _), _ = common.load_mnist_like("mnist", synthetic_data, torch.device("cpu"))
    (x, y), (tx, ty) = common.load_mnist_like("mnist", synthetic_data, torch.device("cpu"), limit=30)
    assert len(x) == len(y) == len(tx) == len(ty) == 30
    assert torch.equal(x, full_x[:30])


def test_missing_data_without_network_names_the_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with pytest.raises(SystemExit) as stop:
        common.load_mnist_like("fashion-mnist", tmp_path, torch.device("cpu"))
    message = str(stop.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message


@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (5, 8)])
def test_batch_indices_cover_every_example_once(n, batch_size):
    batches = list(common.batch_indices(n, batch_size, torch.device("cpu"), torch.Generator()))
    assert len(batches) == common.num_batches(n, batch_size) == math.ceil(n / batch_size)
    assert sorted(torch.cat(batches).tolist()) == list(range(n))  # nothing dropped or repeated


def test_batch_indices_shuffle_depends_only_on_the_generator():
    first = torch.cat(list(common.batch_indices(100, 7, "cpu", torch.Generator().manual_seed(3))))
    again = torch.cat(list(common.batch_indices(100, 7, "cpu", torch.Generator().manual_seed(3))))
    ordered = torch.cat(list(common.batch_indices(100, 7, "cpu")))
    assert torch.equal(first, again) and not torch.equal(first, ordered)
    assert torch.equal(ordered, torch.arange(100))


# --- flags and device -------------------------------------------------------------------------
@pytest.mark.parametrize("parse, text", [(common.positive_int, "0"), (common.positive_int, "-2"),
                                         (common.positive_float, "-1"), (common.positive_float, "nan"),
                                         (common.nonnegative_float, "-0.1"),
                                         (common.positive_int, "abc")])
def test_number_types_refuse_bad_values(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_auto_device_picks_what_is_there(capsys):
    device = common.pick_device("auto")
    expected = "cuda" if torch.cuda.is_available() else "mps" if common._mps_available() else "cpu"
    assert device.type == expected
    assert f"device: {expected}" in capsys.readouterr().out


# --- --amp on every CPU: bf16 only where the CPU has bf16 units ---------------------------------
@pytest.mark.parametrize("onednn, avx512_bf16, amx, machine, expected", [
    (False, True, True, "x86_64", False),   # oneDNN says no (AVX2 only): no, whatever else
    (True, False, False, "x86_64", False),  # AVX-512 without BF16: oneDNN would emulate it
    (True, True, False, "x86_64", True),    # AVX-512 BF16 (Cooper Lake, Zen 4)
    (True, False, True, "AMD64", True),     # AMX (Sapphire Rapids), as Windows names x86-64
    (True, False, False, "aarch64", True),  # Arm: oneDNN's answer is the BF16 extension's
    (False, False, False, "arm64", False),
])
def test_cpu_computes_bf16_only_with_bf16_units(monkeypatch, onednn, avx512_bf16, amx, machine,
                                                expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert common.cpu_computes_bf16() is expected


def test_a_torch_without_onednn_computes_no_bf16(monkeypatch):
    def absent():
        raise RuntimeError("No such operator mkldnn::_is_mkldnn_bf16_supported")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", absent)
    assert common.cpu_computes_bf16() is False


def amp_args(*flags):
    return argparse.Namespace(amp="--amp" in flags, load="w.pt" if "--load" in flags else None)


@pytest.mark.parametrize("device, flags, bf16_units", [
    ("cpu", [], False), ("cpu", ["--amp"], True), ("cpu", ["--amp", "--load"], False),
    ("cuda", ["--amp"], False)])
def test_check_amp_lets_through_what_runs_at_full_speed(monkeypatch, capsys, device, flags,
                                                        bf16_units):
    """No --amp, a CPU with bf16 units, --load (which trains nothing), or cuda (whatever the
    CPU): as before, nothing printed."""
    monkeypatch.setattr(common, "cpu_computes_bf16", lambda: bf16_units)
    args = amp_args(*flags)
    common.check_amp(args, torch.device(device))
    assert args.amp == ("--amp" in flags) and capsys.readouterr().out == ""


def test_check_amp_refuses_training_on_a_cpu_without_bf16_units(monkeypatch):
    monkeypatch.setattr(common, "cpu_computes_bf16", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with pytest.raises(SystemExit) as stop:
        common.check_amp(amp_args("--amp"), torch.device("cpu"))
    message = str(stop.value)
    assert "\n" not in message and "AVX2" in message and "has no bf16 units" in message
    assert "25-50x slower than fp32" in message and message.endswith("run without --amp")


@pytest.mark.parametrize("trained_with_amp", [True, False])
def test_load_of_a_bf16_run_says_it_evaluates_in_fp32(tmp_path, capsys, trained_with_amp):
    """Autocast wraps the training steps only: --load of a run trained with --amp redoes its
    numbers in fp32 on any CPU, and says so in one line; another flag's weights say nothing."""
    path = tmp_path / "w.pt"
    common.save_checkpoint(path, "cnn", args={"amp": trained_with_amp}, epoch=1)
    common.load_checkpoint(path, "cnn")
    common.load_checkpoint(path, "cnn", flag="--cnn-weights")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ([f"--load: {path} was trained with --amp (bf16 autocast of the training "
                      f"steps); its figures and numbers are redone in fp32, as every evaluation "
                      f"here runs, on any device"] if trained_with_amp else [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_and_absent_is_a_one_line_error():
    with pytest.raises(SystemExit, match="no CUDA device"):
        common.pick_device("cuda")


# --- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "w.pt"
    common.save_checkpoint(path, "cnn", model={"w": torch.ones(3)}, epoch=4, history=[{"a": 1.0}])
    checkpoint = common.load_checkpoint(path, "cnn")
    assert checkpoint["epoch"] == 4 and torch.equal(checkpoint["model"]["w"], torch.ones(3))


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    common.save_checkpoint(path, "cnn", epoch=1)
    real_save = torch.save

    def killed_midway(obj, target):
        real_save(obj, target)
        with open(target, "r+b") as f:
            f.truncate(10)  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        common.save_checkpoint(path, "cnn", epoch=2)
    monkeypatch.undo()
    assert common.load_checkpoint(path, "cnn")["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("content, phrase", [
    (None, "no weights file"),
    (b"hello, not weights", "not a weights file"),
    ({"model": {}}, "not a checkpoint written by this repository"),
    ({"kind": "vae_conv", "model": {}}, "holds 'vae_conv' weights, expected 'cnn'"),
])
def test_load_checkpoint_refuses_what_is_not_ours(tmp_path, content, phrase):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(SystemExit, match=phrase):
        common.load_checkpoint(path, "cnn")


def test_load_checkpoint_names_a_folder_and_an_empty_file(tmp_path):
    with pytest.raises(SystemExit, match="is a folder, not a weights file"):
        common.load_checkpoint(tmp_path, "cnn")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="is empty"):
        common.load_checkpoint(tmp_path / "empty.pt", "cnn")


def test_load_state_of_another_architecture_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as stop:
        common.load_state(torch.nn.Linear(3, 2), torch.nn.Linear(4, 2).state_dict(), "w.pt", "a net")
    assert "do not fit a net" in str(stop.value) and "\n" not in str(stop.value)


def test_metrics_json_holds_args_history_and_final(tmp_path):
    args = argparse.Namespace(epochs=2, lr=0.1)
    common.save_metrics(tmp_path / "m.json", args, torch.device("cpu"), 1.234,
                        [{"epoch": 1}], {"test_acc": 0.5})
    record = json.loads((tmp_path / "m.json").read_text())
    assert record == {"args": {"epochs": 2, "lr": 0.1}, "device": "cpu", "wall_seconds": 1.23,
                      "history": [{"epoch": 1}], "final": {"test_acc": 0.5}, "versions": VERSIONS}


def cpuinfo_model_name():
    """The CPU's name as Linux's /proc/cpuinfo gives it (None elsewhere), read here on its own."""
    path = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
             if line.startswith("model name")] if path.is_file() else []
    return names[0] if names else None


# what the assignment asks a report to mention, and which CPU made a number (its time, the last
# digits of an --amp run), read here independently of common.versions
VERSIONS = {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "platform": platform.platform(),
            "processor": cpuinfo_model_name() or platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": common.cpu_computes_bf16()}  # its own tests: test_cpu_computes_bf16_*


def test_first_log_line_names_the_versions_and_the_device(capsys):
    common.pick_device("cpu")
    first = capsys.readouterr().out.splitlines()[0]
    assert all(f"{name} {value}" in first for name, value in VERSIONS.items())
    assert first.endswith("device: cpu")


@pytest.mark.slow
def test_importing_the_scripts_leaves_torchvision_out():
    """torchvision's ~2 s import waits until data or an image grid needs it (common.dataset_class),
    so --help and a flag error answer at once; a top-level `import torchvision` anywhere fails."""
    scripts = sorted(path.stem for path in ROOT.glob("*.py"))
    code = f"import sys; import {', '.join(scripts)}; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# --- training helpers --------------------------------------------------------------------------
def test_cosine_lr_matches_torch_scheduler():
    """Independent reference: torch's CosineAnnealingLR (closed form, eta_min = 0)."""
    total = 50
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    for step in range(total + 1):
        assert common.cosine_lr(0.3, step, total) == pytest.approx(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()


def test_cosine_lr_warms_up_linearly_to_the_peak():
    assert [common.cosine_lr(1.0, s, 100, warmup_steps=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert common.cosine_lr(1.0, 4, 100, warmup_steps=4) == 1.0


def test_cosine_lr_after_warm_up_is_torch_cosine_over_the_remaining_steps():
    """After `warmup_steps`, the decay is CosineAnnealingLR (eta_min = 0) over the steps that are
    left, so the schedule reaches 0 exactly at `total_steps` and not before: the edges (the step
    after warm-up, the last step, the end) are where an off-by-one would show."""
    peak, warmup, total = 0.3, 6, 40
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
    for step in range(warmup, total + 1):
        assert common.cosine_lr(peak, step, total, warmup) == pytest.approx(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert common.cosine_lr(peak, total - 1, total, warmup) > 0
    assert common.cosine_lr(peak, total, total, warmup) == 0


def test_set_lr_sets_every_parameter_group():
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": 0.1},
              {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.2}]
    optimizer = torch.optim.SGD(groups)
    common.set_lr(optimizer, 0.05)
    assert [group["lr"] for group in optimizer.param_groups] == [0.05, 0.05]


@pytest.mark.parametrize("losses, patience, stop", [
    ([3, 2, 1], 1, False), ([3, 2, 2], 1, True), ([3, 2, 2.5, 2.1], 2, True),
    ([3, 2, 2.5, 1.9], 2, False), ([3, 4, 5, 6], 0, False), ([3], 1, False)])
def test_patience(losses, patience, stop):
    assert common.patience_exhausted(losses, patience) is stop


def test_stop_early_watches_the_named_number_of_the_evaluations(capsys):
    """Records without the number (epochs without evaluation) neither count nor stop; the line
    printed names the number watched."""
    history = [{"epoch": 1, "test_total": 3.0}, {"epoch": 2}, {"epoch": 3, "test_total": 3.5,
                                                               "test_loss": 0.1}]
    assert not common.stop_early(history[:2], "test_total", 1)  # the last record has no test_total
    assert common.stop_early(history, "test_total", 1)
    assert "test total has not improved for 1 evaluations" in capsys.readouterr().out
    assert not common.stop_early(history, "test_total", 0)  # 0 = never
    assert not common.stop_early(history, "test_loss", 1)   # one value: nothing to compare with


def test_check_finite_names_epoch_batch_and_term():
    common.check_finite(1, recon=torch.tensor([1.0, 2.0]))  # finite: nothing happens
    with pytest.raises(SystemExit) as stop:
        common.check_finite(3, "figures/x.pt", recon=torch.tensor([1.0, 2.0]),
                            kl=torch.tensor([1.0, float("inf"), float("nan")]))
    message = str(stop.value)
    assert "kl loss became inf at epoch 3, batch 2" in message and "figures/x.pt" in message


def test_summary_line():
    line = common.summary_line(3, 50, 4.21, recon=98.123, kl=12.3, test_acc=None)
    assert line == "epoch 3/50 | recon 98.12 | kl 12.3 | 4.2 s"
    line = common.summary_line(2000, 100000, 9.0, unit="iteration", test_acc=0.75)
    assert line == "iteration 2000/100000 | test acc 0.75 | 9.0 s"
    line = common.summary_line(171, 200, 6.8, iteration=11457, test_mse=0.00112134)
    assert line == "epoch 171/200 | iteration 11457 | test mse 0.001121 | 6.8 s"  # a count whole


def test_use_run_args_takes_the_runs_values_and_says_so(capsys):
    args = argparse.Namespace(fc_width=32, subset=1.0, seed=0)
    checkpoint = {"args": {"fc_width": 4096, "subset": 1.0, "seed": 3}}
    common.use_run_args(args, checkpoint, ("fc_width", "subset", "seed"), "w.pt")
    assert (args.fc_width, args.subset, args.seed) == (4096, 1.0, 3)
    assert capsys.readouterr().out.splitlines() == ["--fc-width 4096 as in w.pt", "--seed 3 as in w.pt"]


# --- figures -------------------------------------------------------------------------------------
def test_plot_helpers_write_png_files(tmp_path):
    common.plot_curves(tmp_path / "c.png", {"train": ([1, 2], [0.5, 0.6]), "test": ([1, 2], [0.4, 0.5])},
                       "epoch", "accuracy", "t")
    common.plot_image_rows(tmp_path / "g.png", {"a": torch.rand(8, 1, 28, 28), "b": torch.rand(4, 1, 28, 28)},
                           title="t", nrow=4)
    labels = torch.arange(60) % 3
    common.plot_scatter(tmp_path / "s.png", {"": torch.randn(60, 2)}, labels, ["a", "b", "c"], "t")
    common.plot_scatter(tmp_path / "p.png", {"one": torch.randn(60, 2), "two": torch.randn(60, 2)},
                        labels, ["a", "b", "c"], "t",
                        overlays={"region": torch.randn(200, 2), "chosen": torch.randn(5, 2)})
    grid = {f"panel {i}": {"a": ([1, 2], [i, i + 1])} for i in range(3)}
    common.plot_panels(tmp_path / "q.png", grid, "step", "t", ncols=2)  # 2x2, one left empty
    for name in ("c.png", "g.png", "s.png", "p.png", "q.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_log_axes_are_labelled_at_1_2_5_and_styles_are_applied(tmp_path, monkeypatch):
    """A log axis from 60 to 2000 names 100, 200, 500, 1000 and 2000 in plain numbers (not only
    10^2 and 10^3); one within a factor of 10 gets several round numbers, a band of 20-23 (with
    one value at 15 and one at 32) two or more inside it; a style given for a
    label is that curve's; three side-by-side panels are no wider than 3x their height."""
    drawn = []
    monkeypatch.setattr(common, "save_figure", lambda fig, path: drawn.append(fig))
    xs = list(range(1, 41))
    band = [32, 15] + [20 + 3 * (x % 2) for x in xs[2:]]  # a KL: one high, one low, then 20-23
    common.plot_panels(tmp_path / "l.png", {"wide": {"train": (xs, [60 + 2000 / x ** 2 for x in xs])},
                                            "narrow": {"": (xs, [14 + 18 / x for x in xs])},
                                            "band": {"": (xs, band)}},
                       "epoch", "t", log_y=True, styles={"train": {"color": "red", "linestyle": "--"}})
    fig = drawn[0]
    fig.canvas.draw()

    def labels(ax, low=0, high=float("inf")):
        bottom, top = ax.get_ylim()
        return {t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks())
                if max(bottom, low) <= v <= min(top, high)}
    wide, narrow, band_axis = fig.axes
    assert {"100", "200", "500", "1000", "2000"} <= labels(wide)
    assert len(labels(narrow)) >= 3
    assert len(labels(band_axis, 20, 23)) >= 2  # labels where the curve lies, not only 15, 20, 30
    assert (wide.get_lines()[0].get_color(), wide.get_lines()[0].get_linestyle()) == ("red", "--")
    width, height = fig.get_size_inches()
    assert width <= 3 * height


# --- the training run ----------------------------------------------------------------------------
def run_args(tmp_path, **overrides):
    return argparse.Namespace(**{"epochs": 3, "patience": 0, "resume": False, "out_dir": str(tmp_path),
                                 **overrides})


def toy_fit(args, stem, stop_after=None):
    """A minimal fit on the shared bookkeeping: a linear model, SGD, one batch per epoch."""
    generator = common.seed_everything(0)
    common.out_dir(args)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = common.Run(args, stem, "toy", {"model": model}, {"optimizer": optimizer}, generator)
    for epoch in range(run.done + 1, args.epochs + 1):
        x = torch.randn(8, 2, generator=generator)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        common.check_finite(epoch, run.weights_path, mse=loss.detach()[None])
        run.log(epoch, {"train_loss": loss.item(), "test_loss": loss.item()})
        run.save(epoch, note=f"after {epoch}")
        if epoch == stop_after:
            break
    return run, model


def test_run_writes_a_weights_file_and_a_checkpoint_and_resume_equals_one_run(tmp_path, capsys):
    whole, model = toy_fit(run_args(tmp_path / "a"), tmp_path / "a" / "toy")
    weights = common.load_checkpoint(tmp_path / "a" / "toy.pt", "toy")
    checkpoint = common.load_checkpoint(tmp_path / "a" / "toy.ckpt", "toy")
    assert "optimizers" not in weights and "rng" not in weights  # weights-only: what is committed
    assert "optimizers" in checkpoint and weights["note"] == "after 3"
    assert [r["epoch"] for r in weights["history"]] == [1, 2, 3]
    assert "epoch 3/3 | train loss" in capsys.readouterr().out

    toy_fit(run_args(tmp_path / "b"), tmp_path / "b" / "toy", stop_after=1)  # killed after epoch 1
    resumed, resumed_model = toy_fit(run_args(tmp_path / "b", resume=True), tmp_path / "b" / "toy")
    assert resumed.extra["note"] == "after 3"
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    assert torch.equal(resumed_model.weight, model.weight)


def test_resume_from_another_runs_checkpoint_extends_it_under_this_runs_name(tmp_path):
    """--epochs 3 --resume <a 2-epoch run's .ckpt>: the third epoch continues that run (the same
    numbers as one 3-epoch run) and is written under the new name, the old files untouched."""
    whole, _ = toy_fit(run_args(tmp_path / "whole"), tmp_path / "whole" / "toy")
    toy_fit(run_args(tmp_path, epochs=2), tmp_path / "toy_e2")
    before = (tmp_path / "toy_e2.pt").read_bytes()
    extended, _ = toy_fit(run_args(tmp_path, resume=str(tmp_path / "toy_e2.ckpt")), tmp_path / "toy")
    assert [r["train_loss"] for r in extended.history] == [r["train_loss"] for r in whole.history]
    assert common.load_checkpoint(tmp_path / "toy.pt", "toy")["epoch"] == 3
    assert (tmp_path / "toy_e2.pt").read_bytes() == before


def test_a_run_records_the_machine_of_each_session_and_load_passes_it_on(tmp_path, monkeypatch):
    """trained_on: one entry (versions and device) per machine the run trained on; a run resumed
    on another CPU has two, and --load gives the training's, not the reloading machine's."""
    here = {**VERSIONS, "device": "cpu"}
    toy_fit(run_args(tmp_path), tmp_path / "toy", stop_after=1)
    toy_fit(run_args(tmp_path, resume=True), tmp_path / "toy", stop_after=2)  # the same machine
    assert common.load_checkpoint(tmp_path / "toy.pt", "toy")["trained_on"] == [here]
    elsewhere = {**VERSIONS, "processor": "another CPU", "cpu_capability": "AVX2", "cpu_bf16": False}
    monkeypatch.setattr(common, "versions", lambda: elsewhere)
    resumed, _ = toy_fit(run_args(tmp_path, resume=True), tmp_path / "toy")
    assert resumed.provenance()["trained_on"] == [here, {**elsewhere, "device": "cpu"}]
    loaded = common.LoadedRun(common.load_checkpoint(tmp_path / "toy.pt", "toy"))
    assert loaded.provenance() == {"trained_with": vars(run_args(tmp_path, resume=True)),
                                   "trained_on": [here, {**elsewhere, "device": "cpu"}]}


@pytest.mark.parametrize("content, phrase", [
    (None, "no metrics file at"), ("folder", "is a folder, not a metrics file"),
    (bytes(range(256)), "is not a metrics JSON"), ("[1, 2]", "is not the metrics of a toy run"),
    (json.dumps({"history": [{"epoch": 1, "test_acc": 0.5}]}), "no training history with 'train_loss'")])
def test_read_metrics_refuses_what_is_not_a_runs_metrics(tmp_path, content, phrase):
    path = tmp_path / "run_metrics.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stop:
        common.read_metrics(path, "train_loss", "a toy run")
    assert phrase in str(stop.value) and "\n" not in str(stop.value)


def test_read_metrics_gives_the_record_and_the_runs_name(tmp_path):
    record = {"args": {}, "history": [{"epoch": 1, "train_loss": 0.5}], "final": {}}
    (tmp_path / "toy_e3_metrics.json").write_text(json.dumps(record))
    assert common.read_metrics(tmp_path / "toy_e3_metrics.json", "train_loss", "a toy run") == (record, "toy_e3")


def test_resume_without_a_checkpoint_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as stop:
        toy_fit(run_args(tmp_path, resume=True), tmp_path / "toy")
    assert "--resume: no checkpoint at" in str(stop.value) and "\n" not in str(stop.value)


def test_a_nan_in_evaluation_stops_before_saving(tmp_path):
    args = run_args(tmp_path)
    run = common.Run(args, tmp_path / "toy", "toy", {"model": torch.nn.Linear(1, 1)}, {},
                     torch.Generator())
    with pytest.raises(SystemExit) as stop:
        run.log(2, {"train_loss": 0.5, "test_loss": float("nan")})
    assert "test loss became nan at epoch 2 (evaluation)" in str(stop.value)
    assert not (tmp_path / "toy.pt").exists()


def test_run_main_turns_running_out_of_memory_into_one_line():
    def main(argv):
        torch.empty(2 ** 62, dtype=torch.uint8)  # far beyond any machine's memory
    with pytest.raises(SystemExit) as stop:
        common.run_main(main)
    assert "out of memory" in str(stop.value) and "\n" not in str(stop.value)


def test_run_main_names_a_number_beyond_float32():
    def main(argv):
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e38)
        for _ in range(2):
            model(torch.ones(1, 2)).sum().backward()
            optimizer.step()
    with pytest.raises(SystemExit, match="beyond what float32 holds"):
        common.run_main(main)


# --- devices -------------------------------------------------------------------------------------
def test_a_checkpoint_from_more_gpus_restores_the_ones_present(monkeypatch):
    """A checkpoint saved on a 4-GPU machine resumes on a 1-GPU one: one stream restored, no
    IndexError (the fake CUDA records what is set)."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: restored.append(index))
    generator = torch.Generator()
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state(),
             "cuda": [torch.zeros(16, dtype=torch.uint8)] * 4}
    common.restore_rng_state(state, generator)
    assert restored == [0]


def test_random_shift_moves_each_image_whole_and_fills_the_border():
    """Each image is its own copy moved by (dy, dx) in [-2, 2]², computed here by slicing, with
    the uncovered border at `fill`; the shifts vary across the batch."""
    x = torch.rand(200, 1, 9, 7)
    out = common.random_shift(x, torch.Generator().manual_seed(0), max_shift=2, fill=-3.0)
    seen = set()
    for image, moved in zip(x[:, 0], out[:, 0]):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = torch.full((9, 7), -3.0)
                expected[max(dy, 0):9 + min(dy, 0), max(dx, 0):7 + min(dx, 0)] = \
                    image[max(-dy, 0):9 - max(dy, 0), max(-dx, 0):7 - max(dx, 0)]
                if torch.equal(moved, expected):
                    matches.append((dy, dx))
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 25  # every shift in [-2, 2]² drawn among 200 images


def test_to_device_moves_the_same_values():
    values = torch.randn(5, generator=torch.Generator().manual_seed(0))
    moved = common.to_device(values, "cpu")
    assert torch.equal(moved, values)
    assert common.to_device(values, torch.device("meta")).device.type == "meta"


def test_deterministic_cuda_settings_are_applied_only_for_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda flag: calls.append(flag))
    common.pick_device("cpu", deterministic=True)
    assert calls == []  # the CPU repeats runs without them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert common.pick_device("cuda", deterministic=True).type == "cuda"
    assert calls == [True] and torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_entries_of_the_image_folder_that_are_not_jpeg_files_are_counted_and_named(tmp_path, capsys):
    """A folder of 12 JPEGs plus a text file, a .png and a sub-folder named like a JPEG: the 12
    images load (none lost), and one warning counts and names the 3 other entries, in order."""
    ids = write_galaxies(tmp_path, n=12, size=32)
    folder = tmp_path / "images_training_rev1"
    (folder / "notes.txt").write_text("not an image")
    (folder / "100001.png").write_bytes(b"")
    (folder / "folder.jpg").mkdir()
    images, loaded = common.load_images(folder, 24, 16, tmp_path / "cache", workers=1)
    assert sorted(map(str, loaded)) == sorted(map(str, ids)) and images.shape == (12, 3, 16, 16)
    assert (f"warning: 3 entries of {folder} are not .jpg files (first: 100001.png, folder.jpg, "
            "notes.txt); ignored") in capsys.readouterr().out
