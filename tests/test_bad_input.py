"""Bad input, walked over every script: each class of mistake gives one line and a non-zero exit,
never a traceback, and a message that names the real cause (a truncated file is not "missing").

The classes: a --load file that is absent, a folder, empty, garbage, text, truncated or another
script's; damaged dataset files and a --data-dir that is a file; an --out-dir that is a file;
--resume with nothing to continue; --amp training on a CPU without bf16 units; a size flag too
big for any machine; a loss that becomes NaN (every weight initialised to NaN; a NaN in
evaluation is tested on common.Run itself). Scripts run in-process through common.run_main, as
`python script.py` does, so the battery stays fast.
"""
import csv
import importlib
import shutil

import pytest
import torch

import common
from conftest import DEVICE_FLAGS, write_galaxies, write_mnist_like

# script: (the flags of a tiny valid run, a size flag that no machine can hold, or None)
SCRIPTS = {
    "cnn": ([], None),
    "vae": (["--arch", "conv"], ["--latent-dim", "1000000000000"]),
    "joint": (["--mode", "joint"], ["--latent-dim", "1000000000000"]),
    "autoencoder": (["--experiment", "conv"], ["--latent-dim", "1000000000000"]),
    "dcgan": ([], None),
    "vaegan": (["--model", "vae"], ["--latent-dim", "1000000000000"]),
    "vgg_mnist": (["--fc-width", "16"], ["--fc-width", "1000000000000"]),
    "lstm_tweets": (["--iterations", "2", "--eval-every", "1"], ["--hidden", "1000000000000"]),
    "galaxy_vae": (["--image-size", "32", "--workers", "1"], ["--latent-dim", "1000000000000"]),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic MNIST, Fashion-MNIST, two tweet files and galaxy images, all small."""
    root = tmp_path_factory.mktemp("bad_input_data")
    write_mnist_like(root, "MNIST", n_train=64, n_test=32)
    write_mnist_like(root, "FashionMNIST", n_train=64, n_test=32)
    write_galaxies(root / "galaxy", n=24)
    for name in ("tweets_train.csv", "tweets_test.csv"):
        with open(root / name, "w", newline="") as f:
            rows = [["text", "label"]] + [[f"tweet number {i} " + "good" * (i % 2), i % 2]
                                          for i in range(40)]
            csv.writer(f).writerows(rows)
    return root


def argv(script, data_dir, out_dir, *extra):
    flags, _ = SCRIPTS[script]
    cache = ["--cache-dir", f"{out_dir}_cache"] if script == "galaxy_vae" else []
    return [*flags, *cache, "--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            *(["--epochs", "1"] if script != "lstm_tweets" else []), "--limit", "32", *map(str, extra)]


def one_line_error(capsys, script, arguments):
    """Run the script as a user would; return its one-line error (argparse's on stderr, or
    common.fail's in the SystemExit)."""
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as stop:
        common.run_main(module.main, arguments)
    code = stop.value.code
    message = capsys.readouterr().err.strip() if isinstance(code, int) else str(code)
    assert code not in (0, None), message
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    return message


# --- --load: every way a file can be the wrong thing --------------------------------------------
def bad_weights(kind, path):
    if kind == "absent":
        return path
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 40)
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "truncated":
        torch.save({"kind": "x", "models": {"w": torch.zeros(50_000)}}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "another script's":
        torch.save({"kind": "some_other_script", "models": {}}, path)
    return path


LOAD_CASES = {"absent": "no weights file at", "folder": "is a folder, not a weights file",
              "empty": "is empty", "garbage": "damaged, truncated or in another format",
              "text": "damaged, truncated or in another format",
              "truncated": "damaged, truncated or in another format",
              "another script's": "holds 'some_other_script' weights"}


@pytest.mark.parametrize("case", LOAD_CASES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_load_of_a_wrong_file(script, case, data_dir, tmp_path, capsys):
    path = bad_weights(case, tmp_path / "weights.pt")
    message = one_line_error(capsys, script, argv(script, data_dir, tmp_path / "out", "--load", path))
    assert LOAD_CASES[case] in message and "--load" in message


# --- data files ----------------------------------------------------------------------------------
MNIST_SCRIPTS = [s for s in SCRIPTS if s not in ("lstm_tweets", "galaxy_vae")]


def damaged_copy(data_dir, tmp_path, damage):
    """A copy of the synthetic datasets with every training-image file damaged."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    for raw in copy.glob("*/raw"):
        images = raw / "train-images-idx3-ubyte"
        images.write_bytes(damage(images.read_bytes()))
    return copy


@pytest.mark.parametrize("damage, phrase", [
    (lambda data: data[:len(data) // 2], "is truncated"),
    (lambda data: b"GIF89a" + data[6:], "is not an IDX file"),
])
@pytest.mark.parametrize("script", MNIST_SCRIPTS)
def test_damaged_dataset_file(script, damage, phrase, data_dir, tmp_path, capsys):
    damaged = damaged_copy(data_dir, tmp_path, damage)
    message = one_line_error(capsys, script, argv(script, damaged, tmp_path / "out"))
    assert phrase in message and "train-images-idx3-ubyte" in message


@pytest.mark.parametrize("script", MNIST_SCRIPTS)
def test_data_dir_that_is_a_file(script, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    message = one_line_error(capsys, script, argv(script, tmp_path / "file", tmp_path / "out"))
    assert "is a file, not a folder" in message


@pytest.mark.parametrize("content, phrase", [
    (b"\x00\x01\x02\xff" * 300, "is a binary file, not a text file of tweets"),
    (b"", "holds no tweets"),
])
def test_tweet_file_that_is_binary_or_empty(content, phrase, data_dir, tmp_path, capsys):
    (tmp_path / "bad.csv").write_bytes(content)
    message = one_line_error(capsys, "lstm_tweets", argv("lstm_tweets", data_dir, tmp_path / "out",
                                                         "--train-csv", tmp_path / "bad.csv"))
    assert phrase in message


def test_tweet_path_that_is_a_folder(data_dir, tmp_path, capsys):
    message = one_line_error(capsys, "lstm_tweets", argv("lstm_tweets", data_dir, tmp_path / "out",
                                                         "--test-csv", tmp_path))
    assert "is a folder" in message


# --- output folder, resume, sizes, a loss that blows up -----------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_out_dir_that_is_a_file(script, data_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    message = one_line_error(capsys, script, argv(script, data_dir, tmp_path / "file"))
    assert "--out-dir" in message and "is a file, not a folder" in message


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_with_nothing_to_continue(script, data_dir, tmp_path, capsys):
    message = one_line_error(capsys, script, argv(script, data_dir, tmp_path / "out", "--resume"))
    assert "--resume: no checkpoint at" in message


@pytest.mark.parametrize("script", SCRIPTS)
def test_amp_on_a_cpu_without_bf16_units_stops_before_any_work(script, data_dir, tmp_path, capsys,
                                                                monkeypatch):
    """Emulated bf16 is 25-50x slower than fp32 (and the LSTM has none): --amp training on such
    a CPU stops at once, before the output folder or the data are touched."""
    monkeypatch.setattr(common, "cpu_computes_bf16", lambda: False)
    arguments = [*argv(script, data_dir, tmp_path / "out", "--amp"), "--device", "cpu"]
    message = one_line_error(capsys, script, arguments)
    assert "--amp: this CPU" in message and message.endswith("run without --amp")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", [s for s, (_, size) in SCRIPTS.items() if size])
def test_a_size_no_machine_can_hold(script, data_dir, tmp_path, capsys):
    message = one_line_error(capsys, script, argv(script, data_dir, tmp_path / "out",
                                                  *SCRIPTS[script][1]))
    assert "out of memory" in message


def poisoned(tensor, *args, **kwargs):
    """An initialiser that fills the weights with NaN: the first loss of any model is NaN."""
    with torch.no_grad():
        return tensor.fill_(float("nan"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_loss_that_becomes_nan_names_epoch_and_batch(script, data_dir, tmp_path, capsys,
                                                       monkeypatch):
    for initialiser in ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_"):
        monkeypatch.setattr(torch.nn.init, initialiser, poisoned)
    message = one_line_error(capsys, script, argv(script, data_dir, tmp_path / "out"))
    unit = "iteration" if script == "lstm_tweets" else "epoch"
    assert "loss became nan at " + unit + " 1, batch 1" in message and "stopping" in message
