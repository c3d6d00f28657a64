"""The sample-quality metric of every generator: cnn.frechet_distance against closed forms,
cnn.sample_quality on real and collapsed image sets, and its float64 work kept on the CPU."""
import math
import statistics
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import cnn
import common
from conftest import DEVICE


def test_distance_of_a_set_to_itself_is_zero():
    features = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert cnn.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_one_dimension_matches_the_closed_form():
    """For 1-D Gaussians d² = (μa − μb)² + (σa − σb)², with the sample statistics."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, 1, generator=g) * 2 + 1, torch.randn(200, 1, generator=g) * 0.5 - 3
    xs, ys = a.flatten().double().tolist(), b.flatten().double().tolist()
    expected = (statistics.mean(xs) - statistics.mean(ys)) ** 2 + (statistics.stdev(xs) - statistics.stdev(ys)) ** 2
    assert cnn.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def covariance_2d(points):
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points) / (n - 1)
    syy = sum((p[1] - my) ** 2 for p in points) / (n - 1)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points) / (n - 1)
    return (mx, my), ((sxx, sxy), (sxy, syy))


def test_two_correlated_dimensions_match_the_2x2_closed_form():
    """Tr((ΣaΣb)^½) = sqrt(tr M + 2 sqrt(det M)) for M = ΣaΣb, a 2x2 matrix with positive eigenvalues."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(400, 2, generator=g) @ torch.tensor([[2.0, 0.0], [1.5, 0.5]])
    b = torch.randn(300, 2, generator=g) @ torch.tensor([[0.7, -0.4], [0.0, 1.2]]) + torch.tensor([1.0, -2.0])
    (ma, Sa), (mb, Sb) = covariance_2d(a.double().tolist()), covariance_2d(b.double().tolist())
    M = [[sum(Sa[i][k] * Sb[k][j] for k in range(2)) for j in range(2)] for i in range(2)]
    trace_root = math.sqrt(M[0][0] + M[1][1] + 2 * math.sqrt(M[0][0] * M[1][1] - M[0][1] * M[1][0]))
    expected = ((ma[0] - mb[0]) ** 2 + (ma[1] - mb[1]) ** 2 + Sa[0][0] + Sa[1][1] + Sb[0][0] + Sb[1][1]
                - 2 * trace_root)
    assert cnn.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_distance_grows_with_a_shift_and_with_a_collapse():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(10, 8, generator=g) * 4
    labels = torch.arange(2000) % 10
    real = centres[labels] + torch.randn(2000, 8, generator=g)
    other = centres[labels] + torch.randn(2000, 8, generator=g)
    collapsed = centres[torch.zeros(2000, dtype=torch.long)] + torch.randn(2000, 8, generator=g)
    same = cnn.frechet_distance(other, real)
    shifted = [cnn.frechet_distance(other + s, real) for s in (0.5, 1.0, 2.0)]
    assert same < shifted[0] < shifted[1] < shifted[2]
    assert shifted[2] - same == pytest.approx(8 * 2.0 ** 2, rel=0.05)  # a pure shift adds ‖δ‖²
    assert cnn.frechet_distance(collapsed, real) > 10 * same


def quality_args(weights, seed=0):
    return SimpleNamespace(cnn_weights=str(weights), out_dir="unused", seed=seed)


def test_sample_quality_of_real_and_collapsed_images(synthetic_data, cnn_weights):
    device = torch.device(DEVICE)
    (train_x, _), (test_x, _) = common.load_mnist_like("fashion-mnist", synthetic_data, device)
    real = cnn.sample_quality(test_x, test_x, train_x, quality_args(cnn_weights))
    assert real["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert real["frechet_floor_train_vs_test"] > 0 and real["n_generated"] == len(test_x)
    assert 1.0 < real["class_entropy_nats"] <= math.log(10)  # many classes (a briefly trained CNN)
    collapsed = cnn.sample_quality(test_x[:1].repeat(len(test_x), 1, 1, 1), test_x, train_x,
                                   quality_args(cnn_weights))
    assert collapsed["class_entropy_nats"] == pytest.approx(0.0, abs=1e-12)
    assert collapsed["frechet_distance"] > real["frechet_floor_train_vs_test"]
    assert sum(collapsed["class_shares"].values()) == pytest.approx(1.0)


def test_sample_quality_without_weights_says_so_and_skips(tmp_path, capsys):
    images = torch.rand(4, 1, 28, 28)
    default = SimpleNamespace(cnn_weights=None, out_dir=str(tmp_path), seed=0)
    assert cnn.sample_quality(images, images, images, default) == {}
    assert "sample quality skipped" in capsys.readouterr().out


def test_sample_quality_with_named_weights_that_are_absent_is_one_line(tmp_path):
    images = torch.rand(4, 1, 28, 28)
    with pytest.raises(SystemExit) as stop:
        cnn.sample_quality(images, images, images, quality_args(tmp_path / "cnn.pt"))
    assert "--cnn-weights: no weights file at" in str(stop.value)


class Float64OnlyOnTheCPU(TorchFunctionMode):
    """Fails on a float64 tensor or an eigendecomposition anywhere but on the CPU (MPS has neither),
    and stands in for a GPU whose tensors hold values: a meta tensor (a shape without values)
    copied to the CPU arrives filled with random numbers of its shape and dtype."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.linalg.eigh, torch.linalg.eigvalsh):
            assert args[0].device.type == "cpu", f"{func.__name__} on {args[0].device}"
        if func is torch.Tensor.cpu and args[0].device.type == "meta":
            values = torch.Generator().manual_seed(0)
            if args[0].is_floating_point():
                return torch.randn(args[0].shape, generator=values, dtype=args[0].dtype)
            return torch.randint(0, 10, args[0].shape, generator=values, dtype=args[0].dtype)
        result = func(*args, **kwargs)
        for value in tree_leaves(result):
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                assert value.device.type == "cpu", f"{func.__name__} made float64 on {value.device}"
        return result


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_sample_quality_takes_device_tensors_and_does_float64_on_the_cpu(cnn_weights):
    """The CNN runs where the images are (here the meta device); the Fréchet distance and the
    class shares, in float64, on the CPU: on MPS, float64 and eigh do not exist."""
    meta = torch.device("meta")
    samples, test_x, train_x = (torch.rand(n, 1, 28, 28, device=meta) for n in (40, 40, 60))
    with Float64OnlyOnTheCPU():
        features = torch.randn(50, 8, device=meta)
        assert math.isfinite(cnn.frechet_distance(features, features))
        quality = cnn.sample_quality(samples, test_x, train_x, quality_args(cnn_weights))
        assert math.isfinite(quality["frechet_distance"]) and quality["n_generated"] == 40
        assert sum(quality["class_shares"].values()) == pytest.approx(1.0)
