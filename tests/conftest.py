"""Shared test fixtures: tiny synthetic datasets in torchvision's raw layout, and script runners.

No test touches the network: data is written here, and subprocess runs get a proxy that refuses
every connection, so "data missing" is tested the same way on a laptop with internet as in CI.
"""
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode  # private, but the only hook
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[1]
# The device every script runs on in the tests: cpu by default; TEST_DEVICE=cuda (or mps) runs the
# same suite unchanged on a GPU or a Mac, with --deterministic on CUDA so that the tests which
# compare two runs number for number (resume, --load) hold there too.
DEVICE = os.environ.get("TEST_DEVICE", "cpu")
DEVICE_FLAGS = ["--device", DEVICE, *(["--deterministic"] if DEVICE == "cuda" else [])]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))  # the scripts are top-level modules, not a package


def readme_section(title):
    """The README's section that starts with the heading `title`, up to the next "## " heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end != -1 else len(text)]


def write_idx(path, tensor):
    """Write a uint8 tensor in the IDX format of the MNIST files (magic, sizes, raw bytes)."""
    magic = 0x0800 | tensor.dim()  # 0x08 = unsigned byte, then the number of dimensions
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in tensor.shape)
    path.write_bytes(header + tensor.to(torch.uint8).numpy().tobytes())


def synthetic_split(n, seed):
    """n learnable 28x28 images: class c is a bright 6x6 square at a class-specific place, plus
    noise. Labels cycle 0..9 so every class is present in any prefix of 10 or more."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 28, 28), generator=generator)
    for c in range(10):
        row, col = 3 + (c // 5) * 13, 1 + (c % 5) * 5
        images[labels == c, row:row + 6, col:col + 6] += 180
    return images.clamp(0, 255).to(torch.uint8), labels.to(torch.uint8)


def write_mnist_like(root, folder, n_train=512, n_test=256):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_split(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A --data-dir holding synthetic MNIST and Fashion-MNIST (512 train, 256 test images)."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root, "MNIST")
    write_mnist_like(root, "FashionMNIST")
    return root


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


OFFLINE_ENV = {key: "http://127.0.0.1:9" for key in
               ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}


def run_script(*args):
    """Run a repository script as a user would; the network is closed by a refusing proxy."""
    env = {**os.environ, **OFFLINE_ENV, "no_proxy": "", "NO_PROXY": ""}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *phrases):
    """A user mistake: non-zero exit, one line on stderr, no traceback, the given phrases in it."""
    message = result.stderr.strip()
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in message, message
    assert len(message.splitlines()) == 1, message
    for phrase in phrases:
        assert phrase in message, message


@pytest.fixture(scope="session")
def cnn_weights(synthetic_data, tmp_path_factory):
    """cnn.py's weights after a short run on the synthetic data: the sample-quality classifier."""
    import cnn
    out = tmp_path_factory.mktemp("cnn")
    cnn.main(["--data-dir", str(synthetic_data), "--out-dir", str(out), *DEVICE_FLAGS,
              "--epochs", "2", "--limit", "256"])
    return out / "cnn_e2_limit256.pt"  # named after its knobs (common.run_name)


class NoHostTensors(TorchDispatchMode):
    """Fails any operation that meets a meta tensor and a CPU tensor of one or more elements.
    PyTorch lets a CPU index tensor index a device tensor (on a GPU: a copy the host waits for),
    so meta alone would let that pass; a CPU scalar (an optimizer's step count) is fine."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "meta" for t in tensors):
            host = [tuple(t.shape) for t in tensors if t.device.type != "meta" and t.dim() > 0]
            assert not host, f"{func} meets meta tensors and CPU tensors of shape {host}"
        return func(*args, **(kwargs or {}))


def guard_host_copies(monkeypatch):
    """Call once the model and data are on the meta device. From then on every CPU tensor sent to
    the device through common.to_device (pinned, non-blocking on CUDA) is recorded by shape in
    the returned list, and a plain CPU → device .to() fails: inside a training step that copy
    makes the host wait for the GPU."""
    import common
    plain_to, plain_to_device, copies, inside = torch.Tensor.to, common.to_device, [], []

    def to_device(tensor, device):
        copies.append(tuple(tensor.shape))
        inside.append(True)
        try:
            return plain_to_device(tensor, device)
        finally:
            inside.pop()

    def guarded_to(self, *args, **kwargs):
        moved = plain_to(self, *args, **kwargs)
        assert inside or self.device.type != "cpu" or moved.device.type == "cpu", \
            "a blocking CPU → device copy in the training step (use common.to_device)"
        return moved

    monkeypatch.setattr(common, "to_device", to_device)
    monkeypatch.setattr(torch.Tensor, "to", guarded_to)
    return copies


def count_reads(monkeypatch):
    """A list that grows by one for every value read back from a tensor (.item(), .tolist(),
    float()): on a GPU each is a wait for the device."""
    reads = []
    for name in ("item", "tolist", "__float__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, real=real, name=name: reads.append(name) or real(self, *a))
    return reads


def write_galaxies(root, n=48, size=96, seed=0):
    """A Kaggle-layout galaxy folder: root/images_training_rev1/<GalaxyID>.jpg, n synthetic RGB
    JPEGs (a soft blob on a dark frame: reddish for class "other", bluish and elongated for
    "spiral_odd", every third galaxy), and root/labels.csv (GalaxyID,class). Returns the ids."""
    from PIL import Image, ImageDraw, ImageFilter
    generator = torch.Generator().manual_seed(seed)
    folder = root / "images_training_rev1"
    folder.mkdir(parents=True)
    ids, rows = [], ["GalaxyID,class"]
    for i in range(n):
        galaxy, spiral = str(100000 + 7 * i), i % 3 == 0
        image = Image.new("RGB", (size, size), (4, 4, 6))
        r = int(size * (0.12 + 0.1 * torch.rand(1, generator=generator).item()))
        box = (size // 2 - r * (2 if spiral else 1), size // 2 - r, size // 2 + r * (2 if spiral else 1), size // 2 + r)
        ImageDraw.Draw(image).ellipse(box, fill=(60, 90, 230) if spiral else (230, 150, 60))
        image.filter(ImageFilter.GaussianBlur(3)).save(folder / f"{galaxy}.jpg", quality=90)
        ids.append(galaxy)
        rows.append(f"{galaxy},{'spiral_odd' if spiral else 'other'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return ids


# --- hand-written training steps: what the tests of each script's step compare against ----------
@pytest.fixture
def float64():
    """Float64 as the default dtype (networks, noise and data alike) for the length of a test: the
    script's step and the hand-written one sum in different orders, and Adam divides each
    gradient by its own size, so float32 noise on a near-zero gradient grows into a visible
    difference of the update; in float64 the two agree to ~1e-12."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def record_gradients(optimizer, params):
    """A list that receives a copy of each of `params`' .grad at every optimizer.step(): the
    gradients the step really used, whatever the loop did before it."""
    seen = []
    optimizer.register_step_pre_hook(lambda *_: seen.append([p.grad.clone() for p in params]))
    return seen


def adam_by_hand(params, grads, state, lrs, betas=(0.9, 0.999), eps=1e-8):
    """One step of Adam as Kingma & Ba's Algorithm 1 writes it (torch's default β and ε): moving
    averages m and v, bias-corrected. params, grads: lists of tensors; lrs: one learning rate, or
    one per parameter; state: {} before the first step, updated in place. Returns the parameters
    after the step (new tensors)."""
    state["t"] = t = state.get("t", 0) + 1
    lrs = lrs if isinstance(lrs, (list, tuple)) else [lrs] * len(params)
    stepped = []
    for i, (param, grad, lr) in enumerate(zip(params, grads, lrs)):
        m = betas[0] * state.get(("m", i), 0) + (1 - betas[0]) * grad
        v = betas[1] * state.get(("v", i), 0) + (1 - betas[1]) * grad ** 2
        state["m", i], state["v", i] = m, v
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        stepped.append(param - lr * m_hat / (v_hat.sqrt() + eps))
    return stepped


def kill_at_call(monkeypatch, module, name, n):
    """Make the n-th call of module.<name> raise KeyboardInterrupt, as a run killed at that
    moment (Ctrl-C, a session's end): what is on disk then is what --resume continues from."""
    real, calls = getattr(module, name), []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, killed)
