"""Assignment D, part 1 (CNN basics): the README's answers, checked on the network built in
PyTorch. The numbers are read from the README's section, so the text and the check cannot drift."""
import re

import torch
import torch.nn as nn

from conftest import ROOT

SECTION = "## Questions: CNN basics (assignment D, part 1)"


def section():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end != -1 else len(text)]


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
