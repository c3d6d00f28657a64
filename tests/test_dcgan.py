"""dcgan.py: the report's architecture exactly, the losses' directions, smoke with --load,
--resume, --amp, bad input."""
import json

import pytest
import torch

import common
import dcgan
from conftest import DEVICE_FLAGS, assert_one_line_error, run_script, guard_host_copies


def quick_args(data_dir, out_dir, *extra):
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *DEVICE_FLAGS,
            "--epochs", "2", "--limit", "128", *map(str, extra)]


def layer_outputs(net, x, kinds):
    shapes = []
    for layer in net:
        x = layer(x)
        if isinstance(layer, kinds):
            shapes.append((tuple(x.shape[1:]), sum(p.numel() for p in layer.parameters())))
    return shapes


def test_generator_matches_the_report():
    G = dcgan.Generator()
    assert sum(p.numel() for p in G.parameters()) == 791_776
    convs = layer_outputs(G.net, torch.randn(2, 100, 1, 1), (torch.nn.ConvTranspose2d, torch.nn.Conv2d))
    assert convs == [((128, 7, 7), 627_200), ((64, 14, 14), 131_072), ((32, 28, 28), 32_768), ((1, 28, 28), 288)]
    out = G(torch.randn(3, 100))
    assert out.shape == (3, 1, 28, 28) and out.abs().max() <= 1  # Tanh


def test_discriminator_matches_the_report():
    D = dcgan.Discriminator()
    assert sum(p.numel() for p in D.parameters()) == 691_680
    convs = layer_outputs(D.net, torch.randn(2, 1, 28, 28), torch.nn.Conv2d)
    assert convs == [((32, 28, 28), 288), ((64, 14, 14), 32_768), ((128, 7, 7), 131_072),
                     ((256, 3, 3), 524_288), ((1, 1, 1), 2_304)]
    assert D(torch.randn(5, 1, 28, 28)).shape == (5,)


def test_losses_point_the_right_way():
    confident, unsure = torch.full((8,), 6.0), torch.zeros(8)
    # D's loss falls when it separates real (high logits) from fake (low logits)
    assert dcgan.discriminator_loss(confident, -confident) < dcgan.discriminator_loss(unsure, unsure)
    assert dcgan.discriminator_loss(unsure, unsure).item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    # G's loss falls when D calls its fakes real
    assert dcgan.generator_loss(confident) < dcgan.generator_loss(unsure) < dcgan.generator_loss(-confident)
    # one-sided smoothing: D's best logit on real images is no longer +inf
    assert dcgan.discriminator_loss(confident, -confident, 0.9) > dcgan.discriminator_loss(unsure + 2.2, -confident, 0.9)


def test_training_step_runs_on_the_device_alone(monkeypatch):
    """An epoch of both update steps with G, D and the data on PyTorch's meta device (shapes
    without values): a CPU tensor left in the step fails (meta and CPU tensors do not mix), so
    does an .item() (a meta tensor has no value to read). The CPU-drawn order and noise reach the
    device through common.to_device (pinned and non-blocking on CUDA), not through a .to() that
    makes the host wait."""
    meta = torch.device("meta")
    G, D = dcgan.Generator().to(meta), dcgan.Discriminator().to(meta)
    G.apply(dcgan.init_weights)
    D.apply(dcgan.init_weights)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    args = dcgan.parse_args(["--batch-size", "4"])
    copies = guard_host_copies(monkeypatch)
    terms = dcgan.train_epoch(G, D, opt_g, opt_d, torch.rand(8, 1, 28, 28, device=meta), args, 1,
                              torch.Generator().manual_seed(0))
    assert all(v.device == meta and v.shape == (2,) for v in terms.values())
    assert all(p.grad.device == meta for p in [*G.parameters(), *D.parameters()])
    assert copies == [(8,), (4, dcgan.NZ), (4, dcgan.NZ)]  # the order once, the noise every step


def metrics(out_dir):
    return json.loads((out_dir / "dcgan_metrics.json").read_text())


def test_run_then_load_repeats_figures_and_numbers(synthetic_data, cnn_weights, tmp_path):
    dcgan.main(quick_args(synthetic_data, tmp_path / "a", "--cnn-weights", cnn_weights))
    for name in ("dcgan.pt", "dcgan.ckpt", "dcgan_metrics.json", "dcgan_loss.png", "dcgan_samples.png",
                 "dcgan_epoch1.png", "dcgan_epoch2.png"):
        assert (tmp_path / "a" / name).is_file(), name
    dcgan.main(quick_args(synthetic_data, tmp_path / "b", "--cnn-weights", cnn_weights,
                          "--load", tmp_path / "a" / "dcgan.pt"))
    a, b = (metrics(tmp_path / d)["final"] for d in "ab")
    assert a == b and "frechet_distance" in a and a["epochs_trained"] == 2
    assert (tmp_path / "b" / "dcgan_epoch1.png").is_file()  # the snapshots come back with the weights


def test_resume_continues_the_same_run_with_its_snapshots(synthetic_data, tmp_path):
    dcgan.main(quick_args(synthetic_data, tmp_path / "whole"))
    dcgan.main(quick_args(synthetic_data, tmp_path / "split", "--epochs", "1"))
    dcgan.main(quick_args(synthetic_data, tmp_path / "split", "--resume"))
    whole, split = metrics(tmp_path / "whole"), metrics(tmp_path / "split")
    without_times = [[{k: v for k, v in r.items() if k != "seconds"} for r in m["history"]]
                     for m in (whole, split)]
    assert without_times[0] == without_times[1] and split["final"] == whole["final"]
    snapshots = common.load_checkpoint(tmp_path / "split" / "dcgan.pt", "dcgan")["snapshots"]
    assert sorted(snapshots) == [1]  # epoch 1's, written before the resume


def test_amp_trains_in_bfloat16_to_finite_losses(synthetic_data, tmp_path):
    dcgan.main(quick_args(synthetic_data, tmp_path, "--epochs", "1", "--amp"))
    record = metrics(tmp_path)["history"][0]
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss_d", "loss_g", "d_x", "d_g_z"))


def test_resume_without_a_checkpoint(synthetic_data, tmp_path):
    result = run_script("dcgan.py", *quick_args(synthetic_data, tmp_path), "--resume")
    assert_one_line_error(result, "--resume: no checkpoint at", "dcgan.ckpt")


@pytest.mark.parametrize("flags,phrases", [
    (["--epochs", "0"], ["--epochs", "> 0"]),
    (["--patience", "3"], ["--patience"]),
    (["--real-label", "1.5"], ["--real-label"]),
])
def test_bad_flags(flags, phrases):
    assert_one_line_error(run_script("dcgan.py", *flags), *phrases)
