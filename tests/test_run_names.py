"""A quick edit never touches the committed results (issue 24): every script names a run after
the knobs that differ from its defaults (common.run_name), so the issue's quick edits name runs
that no committed file carries, a changed seed is a new name in every script, and the flags that
do not change what is computed (device, paths) leave the name alone."""
import importlib

import pytest

from conftest import ROOT

# The issue's four quick edits, as a student would type them (data flags aside)
QUICK_EDITS = [
    ("vae", ["--arch", "mlp", "--kl-weight", "0.5", "--epochs", "1", "--limit", "2000"]),
    ("galaxy_vae", ["--arch", "conv", "--latent-dim", "32", "--epochs", "1", "--limit", "200"]),
    ("lstm_tweets", ["--hidden", "64", "--iterations", "200", "--eval-every", "100"]),
    ("cnn", ["--lr", "3e-3", "--epochs", "1", "--limit", "2000"]),
]
# Every script's default run: (script, the flags that pick the variant)
DEFAULT_RUNS = [("cnn", []), ("vae", ["--arch", "mlp"]), ("joint", []), ("autoencoder", []),
                ("dcgan", []), ("vaegan", []), ("vgg_mnist", []), ("lstm_tweets", []),
                ("galaxy_vae", [])]
NOT_RESULTS = ["--device", "cpu", "--out-dir", "elsewhere", "--data-dir", "somewhere"]


def name_of(script, flags):
    """The name the command `python SCRIPT.py FLAGS` gives its run (joint.py: its joint model's)."""
    module = importlib.import_module(script)
    args = module.parse_args(flags)
    return module.model_names(args)["joint"] if script == "joint" else module.run_name(args)


def committed_files():
    return [path.name for path in (ROOT / "figures").rglob("*") if path.is_file()]


@pytest.mark.parametrize("script, flags", QUICK_EDITS, ids=[s for s, _ in QUICK_EDITS])
def test_the_issues_quick_edits_write_beside_every_committed_file(script, flags):
    name = name_of(script, flags)
    assert name != name_of(script, [])
    clashes = [f for f in committed_files() if f.startswith(f"{name}_") or f.startswith(f"{name}.")]
    assert not clashes, (name, clashes)


@pytest.mark.parametrize("script, variant", DEFAULT_RUNS, ids=[s for s, _ in DEFAULT_RUNS])
def test_a_changed_knob_is_a_new_name_and_a_path_is_not(script, variant):
    default = name_of(script, variant)
    assert name_of(script, [*variant, *NOT_RESULTS]) == default
    assert name_of(script, [*variant, "--seed", "1"]) == f"{default}_seed1"


def test_the_default_commands_name_the_committed_runs():
    """Running the README's plain command is reproduction: it rewrites the committed files."""
    for script, variant, committed in [("cnn", [], "cnn"), ("vae", ["--arch", "mlp"], "vae_mlp"),
                                       ("vae", ["--arch", "conv"], "vae_conv"),
                                       ("lstm_tweets", [], "lstm_tweets"), ("joint", [], "joint")]:
        assert name_of(script, variant) == committed
        assert (ROOT / "figures" / f"{committed}.pt").is_file(), committed
