"""Every committed weights file, loaded with --load on the real data, reproduces the `final`
block of its committed metrics JSON: the README's numbers and the weights agree, and the
refactors since they were trained have not changed what the scripts compute.

Every count, string and epoch must be equal; every real number equal to float32's precision
(relative 1e-5, or absolute 1e-7 for numbers near 0). Bit-equality is not possible across
machines: float32 sums over 10,000 images are added up in another order with another thread
count or CPU. Seen here: a cross-entropy near 1e-4 (a log-probability of almost 0, where float32
resolves 6e-8) moved by 4e-5 relative, a test loss by 2e-7; the code of the commit that wrote
these metrics gives the same moved numbers on this machine as this code does.

Skipped without ../shared/data. Runs in the repository root, so paths recorded in the metrics
(figures/cnn.pt) are the same strings.
"""
import glob
import importlib
import json
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # ~3 min together: each reloads a model and redoes its run's numbers
CNN = ["--cnn-weights", "figures/cnn.pt"]
GALAXY = ["--labels", "{data}/galaxy/labels.csv", "--amp"]
# weights file (in figures/) → the script and the flags of the command that reloads it
COMMANDS = {
    "cnn": ("cnn", []),
    "dcgan_e25": ("dcgan", CNN),
    "dcgan_amp": ("dcgan", CNN),
    "joint": ("joint", ["--mode", "joint"]),
    "joint_pretrain_frozen": ("joint", ["--mode", "pretrain", "--load", "figures/joint_pretrain_frozen.pt",
                                        "figures/joint_pretrain_finetuned.pt"]),
    "vae_classifier": ("vae", ["--experiment", "classifier"]),
    "vae_conv": ("vae", ["--arch", "conv", *CNN]),
    "vae_mlp": ("vae", ["--arch", "mlp", *CNN]),
    "vaegan_vae_fc": ("vaegan", ["--model", "vae", *CNN]),
    "autoencoder_fc": ("autoencoder", ["--experiment", "fc"]),
    "autoencoder_normalized": ("autoencoder", ["--experiment", "normalized", *CNN,
                                               "--fc-weights", "figures/autoencoder_fc.pt"]),
    "autoencoder_conv": ("autoencoder", ["--experiment", "conv"]),
    "autoencoder_conv_nofc": ("autoencoder", ["--experiment", "conv", "--no-fc"]),
    "autoencoder_classifier": ("autoencoder", ["--experiment", "classifier"]),
    "autoencoder_classifier_decoder": ("autoencoder", [
        "--experiment", "classifier-decoder", "--conv-weights", "figures/autoencoder_conv.pt",
        "--classifier-weights", "figures/autoencoder_classifier.pt"]),
    "autoencoder_few_labels": ("autoencoder", ["--experiment", "few-labels"]),
    "autoencoder_transfer": ("autoencoder", [
        "--experiment", "transfer", "--conv-weights", "figures/autoencoder_conv.pt",
        "--few-labels-weights", "figures/autoencoder_few_labels.pt"]),
    "galaxy_vae_conv_amp": ("galaxy_vae", [*GALAXY, "--classifier-weights", "figures/galaxy_classifier_amp.pt"]),
    "galaxy_classifier_amp": ("galaxy_vae", ["--experiment", "classifier", *GALAXY]),
    "galaxy_vae_conv_cond_amp_film_classloss30": ("galaxy_vae", [
        *GALAXY, "--classifier-weights", "figures/galaxy_classifier_amp.pt"]),
    "galaxy_vae_conv_e10_amp_gan0.5_disl0.01_from-galaxy_vae_conv_amp": ("galaxy_vae", [
        *GALAXY, "--classifier-weights", "figures/galaxy_classifier_amp.pt"]),
    "galaxy_vae_conv_cond_e10_amp_film_classloss30_gan0.5_disl0.01_from-galaxy_vae_conv_cond_amp_film_classloss30": (
        "galaxy_vae", [*GALAXY, "--classifier-weights", "figures/galaxy_classifier_amp.pt"]),
    "lstm_tweets": ("lstm_tweets", [
        "--train-csv", "{data}/tweets/semeval2017/train/*.tsv",
        "--test-csv", "{data}/tweets/semeval2017/SemEval2017-task4-test.subtask-A.english.txt"]),
    "lstm_tweets_lr0.001_it10000_eval500_max_lm5000": ("lstm_tweets", [
        "--train-csv", "{data}/tweets/semeval2017/train/*.tsv",
        "--test-csv", "{data}/tweets/semeval2017/SemEval2017-task4-test.subtask-A.english.txt"]),
}
ALSO_WRITTEN = {"joint_pretrain_frozen": ["joint_pretrain_finetuned"]}  # two models, one command


def committed_weights():
    """The stems of the weights files git tracks under figures/ (a run re-created or a quick edit
    made locally leaves untracked .pt files beside them: those are not committed results)."""
    listed = subprocess.run(["git", "ls-files", "figures/*.pt"], cwd=ROOT, capture_output=True,
                            text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the committed files cannot be told from local ones")
    return {Path(line).stem for line in listed.stdout.split()}


def test_every_committed_weights_file_has_a_reload_command():
    covered = set(COMMANDS) | {name for names in ALSO_WRITTEN.values() for name in names}
    assert committed_weights() <= covered, committed_weights() - covered


@pytest.mark.parametrize("name", COMMANDS)
def test_load_reproduces_the_committed_final_block(name, shared_data, tmp_path, monkeypatch):
    script, flags = COMMANDS[name]
    monkeypatch.chdir(ROOT)
    load = [] if "--load" in flags else ["--load", f"figures/{name}.pt"]
    flags = expand(flags, shared_data)
    importlib.import_module(script).main([*flags, *load, "--data-dir", str(shared_data),
                                          "--out-dir", str(tmp_path), "--device", "cpu"])
    for run in [name, *ALSO_WRITTEN.get(name, [])]:
        committed = json.loads((ROOT / "figures" / f"{run}_metrics.json").read_text())["final"]
        again = json.loads((tmp_path / f"{run}_metrics.json").read_text())["final"]
        assert_same(again, committed, run)


def expand(flags, data):
    """{data} becomes the shared data folder, and a pattern the files it names, sorted (as the
    README's shell command gives them)."""
    flags = [flag.format(data=data) for flag in flags]
    return [path for flag in flags for path in (sorted(glob.glob(flag)) if "*" in flag else [flag])]


def assert_same(again, committed, where):
    """Equal structure, keys and non-float values; floats to float32's precision."""
    if isinstance(committed, float):
        assert again == pytest.approx(committed, rel=1e-5, abs=1e-7), where
    elif isinstance(committed, dict):
        assert again.keys() == committed.keys(), where
        for key in committed:
            assert_same(again[key], committed[key], f"{where}.{key}")
    elif isinstance(committed, list):
        assert len(again) == len(committed), where
        for i, (a, c) in enumerate(zip(again, committed)):
            assert_same(a, c, f"{where}[{i}]")
    else:
        assert again == committed, where
