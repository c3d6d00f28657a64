"""joint.py: the joint VAE-classifier and the pretrain-then-classify alternative."""
import json

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import common
import joint
import vae
from conftest import assert_one_line_error, run_script


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--device", "cpu",
            "--epochs", "2", "--limit", "128", *map(str, extra)]


def final(path):
    return json.loads(path.read_text())["final"]


def test_vae_py_weights_fit_the_joint_models_vae():
    reference = vae.ConvVAE(latent_dim=256)
    model = joint.JointVAE(latent_dim=256)
    model.vae.load_state_dict(reference.state_dict())  # strict: same names and shapes
    assert model.classify(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert model.head.in_features == 256  # the softmax layer reads the encoding μ


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros(7, 5), torch.ones(7, 5))
    assert joint.kl_divergence(mu, logvar).item() == pytest.approx(
        kl_divergence(q, p).sum(1).mean().item(), rel=1e-5)


def test_joint_loss_weights_each_term():
    torch.manual_seed(0)
    model, x, y = joint.JointVAE(8), torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    args = joint.parse_args(["--ce-weight", "2", "--recon-weight", "0.5", "--kl-weight", "3"])
    terms = joint.joint_terms(model, x, y, torch.Generator().manual_seed(0), args)
    expected = 2 * terms["ce"] + 0.5 * terms["recon"] + 3 * terms["kl"]
    assert terms["total"].item() == pytest.approx(expected.item())
    # the classification term reads the mean μ, not a sample
    assert terms["ce"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(model.classify(x), y).item())


def test_joint_run_then_load(synthetic_data, tmp_path):
    joint.main(quick_args(synthetic_data, tmp_path / "a"))
    for name in ("joint.pt", "joint_metrics.json", "joint_accuracy.png", "joint_loss.png",
                 "joint_comparison.png", "joint_comparison.json"):
        assert (tmp_path / "a" / name).is_file(), name
    joint.main(quick_args(synthetic_data, tmp_path / "b", "--load", tmp_path / "a" / "joint.pt"))
    assert final(tmp_path / "b" / "joint_metrics.json") == final(tmp_path / "a" / "joint_metrics.json")


def test_pretrain_reuses_vae_py_weights_and_freezes_the_encoder(synthetic_data, tmp_path, capsys):
    vae.main(quick_args(synthetic_data, tmp_path, "--arch", "conv"))
    vae_state = common.load_checkpoint(tmp_path / "vae_conv.pt", "vae_conv")["models"]["model"]
    joint.main(quick_args(synthetic_data, tmp_path, "--mode", "pretrain"))
    assert "pretrained VAE: " in capsys.readouterr().out
    frozen = common.load_checkpoint(tmp_path / "joint_pretrain_frozen.pt", "joint_pretrain_frozen")
    tuned = common.load_checkpoint(tmp_path / "joint_pretrain_finetuned.pt", "joint_pretrain_finetuned")
    for key in ("encoder.0.weight", "to_mu.weight"):
        assert torch.equal(frozen["models"]["model"][f"vae.{key}"], vae_state[key])  # untouched
        assert not torch.equal(tuned["models"]["model"][f"vae.{key}"], vae_state[key])  # trained
    assert json.loads((tmp_path / "joint_pretrain_frozen_metrics.json").read_text())[
        "vae_weights"] == str(tmp_path / "vae_conv.pt")


def test_pretrain_trains_a_vae_when_none_is_there_then_load(synthetic_data, tmp_path, capsys):
    joint.main(quick_args(synthetic_data, tmp_path / "a", "--mode", "pretrain"))
    assert "training the VAE here first" in capsys.readouterr().out
    assert (tmp_path / "a" / "joint_pretrain_vae.pt").is_file()
    joint.main(quick_args(synthetic_data, tmp_path / "b", "--mode", "pretrain", "--load", tmp_path / "a"))
    for run in ("joint_pretrain_frozen", "joint_pretrain_finetuned"):
        assert final(tmp_path / "b" / f"{run}_metrics.json") == final(tmp_path / "a" / f"{run}_metrics.json")


def test_comparison_reads_the_cnn_metrics_or_says_they_are_missing(synthetic_data, tmp_path, capsys):
    joint.main(quick_args(synthetic_data, tmp_path))
    assert "cnn_metrics.json not found" in capsys.readouterr().out
    common.write_json(tmp_path / "cnn_metrics.json", {"final": {"test_acc": 0.5}})
    joint.compare(joint.parse_args(["--out-dir", str(tmp_path)]))
    table = json.loads((tmp_path / "joint_comparison.json").read_text())
    assert table["CNN (cnn.py)"] == 0.5 and "joint" in table


@pytest.mark.parametrize("flags, phrase", [
    (["--ce-weight", "-1"], "argument --ce-weight: must be >= 0, got -1"),
    (["--mode", "both"], "argument --mode: invalid choice"),
])
def test_bad_flags_are_refused(flags, phrase, tmp_path):
    assert_one_line_error(run_script("joint.py", "--out-dir", tmp_path, *flags), phrase)


def test_foreign_weights_are_refused(synthetic_data, tmp_path):
    cnn_weights = tmp_path / "cnn.pt"
    common.save_checkpoint(cnn_weights, "cnn", models={})
    result = run_script("joint.py", *quick_args(synthetic_data, tmp_path / "o"), "--load", cnn_weights)
    assert_one_line_error(result, "holds 'cnn' weights, expected 'joint'")
    result = run_script("joint.py", *quick_args(synthetic_data, tmp_path / "o"), "--mode", "pretrain",
                        "--vae-weights", cnn_weights)
    assert_one_line_error(result, "holds 'cnn' weights, expected 'vae_conv'")
