"""The answers to the theory questions (docs/theory.md), checked in PyTorch. Numbers and formulas
are read from the page's sections (the formulas from their ```python lines, evaluated here), so
the text and the check cannot drift.

- Assignment D, part 1 (CNN basics): output sizes, receptive field and parameter count, on the
  network built in PyTorch.
- Assignment D, part 4 (VAE theory): the KL of a Gaussian to N(0, 1), the log σ² gradients, the
  reparameterisation trick and the Bernoulli reconstruction term, against torch.distributions and
  autograd, and against vae.py's own kl_divergence, reparameterize and reconstruction_loss (the
  functions the page names).
- Assignment E (convolution theory): shift-equivariance of convolution, of a constant, of ReLU,
  of strided pooling and of a small CNN, on circular shifts; the Jacobians of a bias, a fully
  connected layer and a 1-d and 2-d convolution, built entry by entry from the page's lines and
  compared with autograd."""
import itertools
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.functional import jacobian
from torch.distributions import Bernoulli, Normal, kl_divergence

import common
import vae
from conftest import ROOT, readme_section

CNN_BASICS = "## Questions: CNN basics (assignment D, part 1)"
VAE_THEORY = "## Questions: VAE theory (assignment D, part 4)"
CONV_THEORY = "## Questions: convolution theory (assignment E)"


def section(title=CNN_BASICS):
    return readme_section(title, "docs/theory.md")


def formulas(title):
    """The ```python lines of a section, `name = expr` or `name[i, j] = expr`, as
    {name: [(index names, expr), ...]} in the order written."""
    found = {}
    for block in re.findall(r"```python\n(.*?)```", section(title), flags=re.S):
        for line in block.strip().splitlines():
            match = re.fullmatch(r"(\w+)(?:\[([\w, ]+)\])? = (.+)", line.strip())
            assert match, line
            indices = tuple(name.strip() for name in match[2].split(",")) if match[2] else ()
            found.setdefault(match[1], []).append((indices, match[3]))
    return found


def formula(title, name):
    """The one expression the section gives for `name`."""
    (entry,) = formulas(title)[name]
    return entry[1]


def evaluate(expr, **names):
    return eval(expr, {"__builtins__": {}, "log": torch.log, "exp": torch.exp}, names)


def entrywise(title, name, shape, **names):
    """The tensor the section's line `name[i, j, ...] = expr` defines, built entry by entry."""
    ((indices, expr),) = formulas(title)[name]
    assert len(indices) == len(shape), (indices, shape)
    out = torch.zeros(shape, dtype=torch.float64)
    for index in itertools.product(*map(range, shape)):
        out[index] = float(evaluate(expr, **names, **dict(zip(indices, index))))
    return out


def number(text):
    """A number as the page writes it: Unicode minus, thousands commas."""
    return float(text.replace("−", "-").replace(",", ""))


def network(pool=nn.MaxPool2d, same_size=False):
    """The assignment's CNN: no biases, no non-linearities. same_size: every convolution keeps its
    input's height and width (the assumption of question 4): padding 1 or 2 and stride 1."""
    return nn.Sequential(
        nn.Conv2d(3, 100, 3, padding=1 if same_size else 0, bias=False),
        nn.Conv2d(100, 50, 5, stride=1 if same_size else 3, padding=2 if same_size else 0, bias=False),
        pool(2),
        nn.Conv2d(50, 30, 3, padding=1 if same_size else 0, bias=False),
        pool((2, 4)),
        nn.Flatten(),
        nn.LazyLinear(10, bias=False),
    )


def test_output_sizes_without_padding_match_the_readme_table():
    stated = re.findall(r"^\| (conv|pool)[^|]*\| (\d+) × (\d+) × (\d+) \|", section(), flags=re.M)
    assert len(stated) == 5, stated
    x, shapes = torch.zeros(1, 3, 256, 256), []
    for layer in network()[:5]:
        x = layer(x)
        shapes.append((x.shape[2], x.shape[3], x.shape[1]))  # height × width × channels
    assert [tuple(map(int, row[1:])) for row in stated] == shapes


def test_same_size_padding_keeps_width_and_height():
    """Question 1: a (2w+1) × (2h+1) filter at stride 1 with w columns of zeros left and right and
    h rows above and below gives a W × H output."""
    for w, h in [(1, 1), (2, 1), (0, 3)]:
        conv = nn.Conv2d(1, 1, (2 * h + 1, 2 * w + 1), padding=(h, w))
        assert conv(torch.zeros(1, 1, 17, 23)).shape[2:] == (17, 23)
    assert "w columns of zeros" in section() and "h rows" in section()


def test_receptive_field_of_a_last_conv_neuron():
    """The input pixels that reach one output of the last convolution: the non-zero gradient of
    that output with respect to the input (average pooling, so every pixel of a window counts,
    and positive weights, so nothing cancels)."""
    net = network(pool=nn.AvgPool2d)[:4]
    for layer in net:
        if isinstance(layer, nn.Conv2d):
            nn.init.constant_(layer.weight, 1.0)
    x = torch.zeros(1, 3, 256, 256, requires_grad=True)
    net(x)[0, 0, 10, 10].backward()
    rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
    size = (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
    stated = re.search(r"receptive field is \*\*(\d+) × (\d+)\*\*", section())
    assert size == tuple(map(int, stated.groups())) == (22, 22)


def test_parameter_count_under_the_same_size_assumption():
    net = network(same_size=True)
    net(torch.zeros(1, 3, 256, 256))  # sizes the fully connected layer
    counts = [sum(p.numel() for p in layer.parameters()) for layer in net]
    stated = re.search(r"\*\*([\d,]+) parameters\*\*", section())
    assert sum(counts) == int(stated.group(1).replace(",", "")) == 755_600
    assert counts == [2_700, 125_000, 0, 13_500, 0, 0, 614_400]


# ----------------------------------------------------------------------------------------------
# Assignment D, part 4: VAE theory
# ----------------------------------------------------------------------------------------------
def vae_function(signature):
    """The vae.py function the page names as "`vae.py`'s `name(signature)`"."""
    pattern = r"`vae\.py`'s\s+`(\w+)\(" + re.escape(signature) + r"\)`"
    match = re.search(pattern, section(VAE_THEORY))
    assert match, signature
    return getattr(vae, match[1])


def stated_mu_sigma():
    match = re.search(r"at μ = ([\d.]+), σ = ([\d.]+) its estimate", section(VAE_THEORY))
    return float(match[1]), float(match[2])


def test_kl_of_a_1d_gaussian_matches_torch_distributions():
    mu = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    sigma = torch.tensor([0.01, 0.1, 0.5, 0.9, 1.0, 1.1, 2.0, 10.0], dtype=torch.float64)[None]
    expected = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0))
    stated = formulas(VAE_THEORY)["KL"]
    assert len(stated) == 2
    for _, expr in stated:
        assert torch.allclose(evaluate(expr, mu=mu, sigma=sigma), expected, rtol=1e-12, atol=1e-12)
    assert "0 only at μ = 0, σ = 1" in section(VAE_THEORY)
    zero = (mu == 0) & (sigma == 1)
    assert expected[zero].abs().max() < 1e-15 and (expected[~zero] > 0).all()


def test_vae_kl_divergence_is_the_diagonal_kl_summed_over_z_averaged_over_the_batch():
    generator = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=generator), 2 * torch.randn(5, 3, generator=generator)
    q = Normal(mu, torch.exp(0.5 * logvar))
    expected = kl_divergence(q, Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(vae_function("mu, logvar")(mu, logvar), expected, rtol=1e-5)
    assert "`vae_loss` at β = 1" in section(VAE_THEORY)
    # −L = −E_q[log p(x|z)] + KL = recon + KL
    assert vae.vae_loss(2.5, 0.75, 1.0)["loss"] == 2.5 + 0.75


def test_log_variance_small_values_and_kl_gradients():
    log_small = re.search(r"σ² = 10⁻⁴ is log σ² ≈ (−[\d.]+)", section(VAE_THEORY))
    assert abs(number(log_small[1]) - torch.log(torch.tensor(1e-4)).item()) < 0.05
    mu = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    logvar = torch.linspace(-12, 3, 16, dtype=torch.float64)[None].requires_grad_()
    var = logvar.detach().exp().requires_grad_()
    by_logvar = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    by_var = kl_divergence(Normal(mu, var.sqrt()), Normal(0.0, 1.0))
    grad_logvar, = torch.autograd.grad(by_logvar.sum(), logvar)  # summed over the 9 μ
    grad_var, = torch.autograd.grad(by_var.sum(), var)
    stated_logvar = evaluate(formula(VAE_THEORY, "dKL_dlogvar"), logvar=logvar.detach())
    stated_var = evaluate(formula(VAE_THEORY, "dKL_dvar"), var=var.detach())
    assert torch.allclose(9 * stated_logvar, grad_logvar)
    assert torch.allclose(9 * stated_var, grad_var)
    assert "lies in (−½, 0) for σ² < 1" in section(VAE_THEORY)
    below_one = stated_logvar[var.detach() < 1]
    assert ((below_one > -0.5) & (below_one < 0)).all()
    at_small = re.search(r"about\s+(−[\d,]+) at σ² = 10⁻⁴", section(VAE_THEORY))
    value = evaluate(formula(VAE_THEORY, "dKL_dvar"), var=torch.tensor(1e-4, dtype=torch.float64))
    assert abs(value / number(at_small[1]) - 1) < 0.01


def test_reparameterised_gradients_match_the_analytic_ones():
    """f(z) = z²: the mean of f over 200,000 samples of vae.reparameterize, and its gradients by
    backpropagation, against the page's E, ∂E/∂μ and ∂E/∂σ (5 standard errors or less)."""
    stated_mu, stated_sigma = stated_mu_sigma()
    mu = torch.tensor(stated_mu, requires_grad=True)
    sigma = torch.tensor(stated_sigma, requires_grad=True)
    n = 200_000
    z = vae_function("mu, logvar, generator")(mu.expand(n), 2 * torch.log(sigma).expand(n),
                                              torch.Generator().manual_seed(0))
    mean = (z ** 2).mean()
    mean.backward()
    values = {"mu": mu.detach(), "sigma": sigma.detach()}
    assert abs(mean.item() - evaluate(formula(VAE_THEORY, "E"), **values)) < 0.04
    assert abs(mu.grad - evaluate(formula(VAE_THEORY, "dE_dmu"), **values)) < 0.03
    assert abs(sigma.grad - evaluate(formula(VAE_THEORY, "dE_dsigma"), **values)) < 0.045


def test_rsample_has_a_gradient_and_sample_has_none():
    mu, sigma = torch.tensor(0.3, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    q = Normal(mu, sigma)
    assert ".rsample()` does the same, while `.sample()` returns a" in section(VAE_THEORY)
    assert not q.sample((10,)).requires_grad
    q.rsample((10,)).sum().backward()
    assert mu.grad == 10 and sigma.grad is not None


def test_the_score_function_estimator_is_noisier():
    """Per-sample variance of the two estimators of ∂E[z²]/∂μ: the pathwise 2z and the score
    function z² · ∂log q/∂μ = z² (z − μ)/σ² = z² ε/σ."""
    mu, sigma = stated_mu_sigma()
    eps = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = mu + sigma * eps
    pathwise, score = 2 * z, z ** 2 * eps / sigma
    assert abs(pathwise.mean() - score.mean()) < 0.05  # both unbiased: 2μ
    ratio = (score.var() / pathwise.var()).item()
    stated = re.search(r"about (\d+) times the\s+variance", section(VAE_THEORY))
    assert round(ratio) == int(stated[1]), ratio


def test_bernoulli_log_likelihood_is_minus_the_summed_bce():
    generator = torch.Generator().manual_seed(0)
    y = torch.rand(784, generator=generator, dtype=torch.float64).clamp(0.01, 0.99)
    binary = torch.randint(0, 2, (784,), generator=generator).double()
    grey = torch.rand(784, generator=generator, dtype=torch.float64)
    log_p = formula(VAE_THEORY, "log_p")
    assert torch.allclose(evaluate(log_p, x=binary, y=y), Bernoulli(probs=y).log_prob(binary).sum())
    for x in (binary, grey):
        assert torch.allclose(evaluate(log_p, x=x, y=y),
                              -F.binary_cross_entropy(y, x, reduction="sum"))
    assert 'F.binary_cross_entropy(y, x, reduction="sum")' in section(VAE_THEORY)


def test_vae_reconstruction_loss_is_minus_log_p_of_one_z_per_image():
    """vae.py's bce reconstruction loss on a forward pass of its MLP VAE: minus the page's
    log p(x|z), averaged over the images, with z = μ + σ ⊙ ε and one ε per image (L = 1)."""
    torch.manual_seed(0)
    model = vae.MLPVAE(latent_dim=2)
    generator = torch.Generator().manual_seed(1)
    binary = (torch.rand(3, 1, 28, 28, generator=generator) > 0.5).float()
    grey = torch.rand(3, 1, 28, 28, generator=generator)
    loss = vae_function('logits, x, "bce"')
    log_p = formula(VAE_THEORY, "log_p")
    with torch.no_grad():
        for x in (binary, grey):
            logits, mu, logvar = model(x, torch.Generator().manual_seed(2))
            eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(2))  # (3, z)
            y = torch.sigmoid(model.decode(mu + torch.exp(0.5 * logvar) * eps))
            expected = -torch.stack([evaluate(log_p, x=x[b], y=y[b]) for b in range(3)]).mean()
            assert torch.allclose(loss(logits, x, "bce"), expected, rtol=1e-5)
        bernoulli = Bernoulli(logits=logits).log_prob(binary).flatten(1).sum(1).mean()
        assert torch.allclose(loss(logits, binary, "bce"), -bernoulli, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Assignment E: convolution theory
# ----------------------------------------------------------------------------------------------
def roll(x, shift):
    """A circular shift of the last two dimensions by shift = (rows, columns)."""
    return torch.roll(x, shift, dims=(-2, -1))


def is_any_roll_of(a, b):
    """Whether a equals b circularly shifted by some amount (0 included)."""
    return any(torch.allclose(a, roll(b, (i, j)), atol=1e-6)
               for i in range(b.shape[-2]) for j in range(b.shape[-1]))


def test_circular_convolution_commutes_with_circular_shifts():
    assert 'padding_mode="circular"' in section(CONV_THEORY)
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")  # with a bias per channel
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        for shift in [(1, 0), (2, 3), (-1, 5)]:
            assert torch.allclose(conv(roll(x, shift)), roll(conv(x), shift), atol=1e-5)


def test_zero_padded_convolution_commutes_with_shifts_away_from_the_borders_only():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 3, padding=1)  # zero padding
    x = torch.randn(1, 1, 10, 10)
    (down, right), pad = (2, 1), 1
    with torch.no_grad():
        shifted_first, shifted_after = conv(roll(x, (down, right))), roll(conv(x), (down, right))
    # output (i, j) sees input rows i − 1 … i + 1: neither the padding nor the wrap-around there
    interior = (..., slice(pad + down, 10 - pad), slice(pad + right, 10 - pad))
    assert torch.allclose(shifted_first[interior], shifted_after[interior], atol=1e-6)
    assert not torch.allclose(shifted_first, shifted_after, atol=1e-3)


def test_a_constant_and_relu_commute_with_shifts_a_bias_map_does_not():
    torch.manual_seed(0)
    x, shift = torch.randn(1, 2, 6, 6), (1, 2)
    assert torch.equal(roll(x, shift) + 0.7, roll(x + 0.7, shift))
    assert torch.equal(torch.relu(roll(x, shift)), roll(torch.relu(x), shift))
    bias_map = torch.randn(6, 6)
    assert not torch.allclose(roll(x, shift) + bias_map, roll(x + bias_map, shift))


def test_the_readmes_pooling_example():
    numbers = r"\(([\d, ]+)\)"
    match = re.search(rf"max-pooling by 2 of {numbers} gives {numbers}, of the input shifted by "
                      rf"one, {numbers}, it gives\s+{numbers}, no shift of {numbers}",
                      section(CONV_THEORY))
    x, pooled, x_shifted, pooled_shifted, again = (
        torch.tensor([float(v) for v in group.split(",")])[None] for group in match.groups())
    assert torch.equal(F.max_pool1d(x, 2), pooled) and torch.equal(pooled, again)
    assert torch.equal(torch.roll(x, 1, dims=-1), x_shifted)
    assert torch.equal(F.max_pool1d(x_shifted, 2), pooled_shifted)
    assert not any(torch.equal(torch.roll(pooled, s, dims=-1), pooled_shifted) for s in range(2))


def test_strided_pooling_commutes_only_with_shifts_by_multiples_of_the_stride():
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pool = lambda t: F.max_pool2d(t, 2)  # noqa: E731
    assert torch.equal(pool(roll(x, (2, 0))), roll(pool(x), (1, 0)))
    assert torch.equal(pool(roll(x, (2, 4))), roll(pool(x), (1, 2)))
    for shift in [(0, 1), (1, 0), (3, 0), (1, 1)]:
        assert not is_any_roll_of(pool(roll(x, shift)), pool(x)), shift


def test_a_cnn_is_equivariant_only_to_shifts_by_the_product_of_its_strides():
    """Circular convolutions with biases, ReLUs, two max-poolings of stride 2: shifts by 4 shift
    the output by 1, and a global pooling after it does not move; shifts by 1, 2 or 3 give an
    output that is no shift of the original one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                        nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                        nn.MaxPool2d(2))
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        out = net(x)
        assert torch.allclose(net(roll(x, (4, 0))), roll(out, (1, 0)), atol=1e-6)
        assert torch.allclose(net(roll(x, (8, 4))), roll(out, (2, 1)), atol=1e-6)
        assert torch.allclose(net(roll(x, (4, 12))).amax((2, 3)), out.amax((2, 3)))
        for shift in [(1, 0), (0, 2), (3, 3), (2, 4)]:
            assert not is_any_roll_of(net(roll(x, shift)), out), shift


def test_shift_augmentation_moves_each_image_by_whole_pixels():
    """The page's pointer: both flags exist and go through common.random_shift, which moves
    each image by a whole number of pixels, the uncovered border filled with zeros."""
    match = re.search(r"`cnn\.py (--[\w-]+)`.*?`vgg_mnist\.py (--[\w-]+) N`", section(CONV_THEORY),
                      flags=re.S)
    for script, flag in (("cnn.py", match[1]), ("vgg_mnist.py", match[2])):
        source = (ROOT / script).read_text(encoding="utf-8")
        assert f'"{flag}"' in source and "common.random_shift(" in source, script
    x = torch.rand(4, 1, 6, 6) + 1  # no zeros of its own
    moved = common.random_shift(x, torch.Generator().manual_seed(0), max_shift=2)
    padded = F.pad(x, [2] * 4)
    for b in range(4):
        assert any(torch.equal(moved[b], padded[b, :, r:r + 6, c:c + 6])
                   for r in range(5) for c in range(5)), b


def test_jacobian_of_an_additive_bias():
    x, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    by_x, by_b = jacobian(lambda x, b: x + b, (x, b))
    assert torch.equal(by_x, entrywise(CONV_THEORY, "bias_dx", (4, 4)))
    assert torch.equal(by_b, entrywise(CONV_THEORY, "bias_db", (4, 4)))


def test_jacobian_of_a_fully_connected_layer():
    m, n = 3, 4
    torch.manual_seed(0)
    layer = nn.Linear(n, m).double()  # weight: m × n
    W, b = layer.weight.detach(), layer.bias.detach()
    x = torch.randn(n, dtype=torch.float64)
    assert torch.allclose(jacobian(layer, x), entrywise(CONV_THEORY, "fc_dx", (m, n), W=W))
    by_W, by_b = jacobian(lambda W, b: F.linear(x, W, b), (W, b))  # (m, m, n), (m, m)
    assert torch.equal(by_W, entrywise(CONV_THEORY, "fc_dW", (m, m, n), x=x))
    assert torch.equal(by_b, entrywise(CONV_THEORY, "fc_db", (m, m)))
    # row-major vec(W): the I_m ⊗ xᵀ the page states, not xᵀ ⊗ I_m
    assert "W.flatten()" in section(CONV_THEORY) and "∂y/∂vec(W) = I_m ⊗ xᵀ" in section(CONV_THEORY)
    by_vec = jacobian(lambda w: F.linear(x, w.reshape(m, n), b), W.flatten())
    assert torch.equal(by_vec, torch.kron(torch.eye(m, dtype=torch.float64), x[None]))
    assert not torch.equal(by_vec, torch.kron(x[None], torch.eye(m, dtype=torch.float64)))


def test_jacobian_of_a_1d_convolution():
    N, K = 7, 3
    generator = torch.Generator().manual_seed(0)
    x, h, b = (torch.randn(size, generator=generator, dtype=torch.float64) for size in (N, K, 1))
    conv = lambda x, h, b: F.conv1d(x[None, None], h[None, None], b)[0, 0]  # noqa: E731
    by_x, by_h, by_b = jacobian(conv, (x, h, b))  # (N−K+1, N), (N−K+1, K), (N−K+1, 1)
    assert torch.allclose(by_x, entrywise(CONV_THEORY, "conv_dx", (N - K + 1, N), h=h, K=K))
    assert torch.allclose(by_h, entrywise(CONV_THEORY, "conv_dh", (N - K + 1, K), x=x))
    assert torch.allclose(by_b[:, 0], entrywise(CONV_THEORY, "conv_db", (N - K + 1,)))
    assert torch.equal(by_x[1:, 1:], by_x[:-1, :-1])  # Toeplitz: constant along diagonals
    assert torch.equal(by_h[1:, :-1], by_h[:-1, 1:])  # Hankel: constant along anti-diagonals


def test_jacobian_of_a_2d_convolution():
    size, K = 5, 3
    out = size - K + 1
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, size, generator=generator, dtype=torch.float64)
    h = torch.randn(K, K, generator=generator, dtype=torch.float64)
    by_x = jacobian(lambda x: F.conv2d(x[None, None], h[None, None])[0, 0], x)  # (out, out, 5, 5)
    stated = entrywise(CONV_THEORY, "conv2d_dx", (out, out, size, size), h=h, K=K)
    assert torch.allclose(by_x, stated)
    # doubly block Toeplitz: block (i, p) = ∂y[i, :]/∂x[p, :] depends on p − i only, and is Toeplitz
    blocks = by_x.permute(0, 2, 1, 3)  # (i, p, j, q)
    assert torch.equal(blocks[1:, 1:], blocks[:-1, :-1])
    assert torch.equal(blocks[..., 1:, 1:], blocks[..., :-1, :-1])
