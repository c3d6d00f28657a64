"""Shared test fixtures: tiny synthetic datasets in torchvision's raw layout, and script runners.

No test touches the network: data is written here, and script runs get a proxy that refuses
every connection, so "data missing" is tested the same way on a laptop with internet as in CI.
"""
import contextlib
import importlib
import io
import math
import os
import shutil
import struct
import subprocess
import sys
import traceback
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
import common  # noqa: E402

# Training with --amp runs where the device computes bf16 (cuda; a CPU with AVX-512 BF16 or AMX);
# on any other CPU common.check_amp refuses it, so the tests that train in bf16 skip there, and
# the summary says so. The refusal itself is tested everywhere, with the detection monkeypatched.
CPU = f"{common.processor_name()}, {torch.backends.cpu.get_cpu_capability()}"
BF16_HERE = DEVICE == "cuda" or (DEVICE == "cpu" and common.cpu_computes_bf16())
NO_BF16 = f"no bf16 units on this {DEVICE} ({CPU}): --amp training is refused here"
needs_bf16 = pytest.mark.skipif(not BF16_HERE, reason=NO_BF16)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember whether each test's body passed, for the tmp_path fixture below."""
    outcome = yield
    if call.when == "call":
        item.passed_body = outcome.get_result().passed


@pytest.fixture
def tmp_path(tmp_path, request):
    """pytest's own tmp_path, emptied once its test has passed: the runs a test makes (weights,
    figures, galaxy caches) are gone with it, and a green suite leaves little in pytest's
    temporary folder (which keeps the last three runs). A failing test's folder stays, to look in."""
    yield tmp_path
    if getattr(request.node, "passed_body", False):
        shutil.rmtree(tmp_path, ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over ~2 s on 2 CPU cores (trains a model to its end, or "
                                       "reloads a committed one); python -m pytest -m 'not slow' is the "
                                       "quick tier")


def pytest_terminal_summary(terminalreporter):
    """One line at the end of every run, -q included: which CPU ran the suite, and whether the
    bf16 training tests ran on it."""
    ran = "ran" if BF16_HERE else f"skipped ({NO_BF16})"
    terminalreporter.write_line(f"cpu: {CPU}; bf16 training tests {ran}")


def readme_section(title, page="README.md"):
    """The section of `page` (README.md, or docs/<name>.md) that starts with the heading `title`,
    up to the next "## " heading."""
    text = (ROOT / page).read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end != -1 else len(text)]


def agrees(stated, value):
    """stated (a number as a page writes it, e.g. "0.9319") equals value rounded to that many
    decimals: the check of every number the README and docs/ copy from a metrics file."""
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    return math.isclose(round(value, decimals), float(stated), abs_tol=10 ** -(decimals + 3))


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


def run_script(script, *args):
    """Run a repository script as `python script args` does, in this process: a new interpreter
    would spend ~2.5 s importing torch for every run, and the suite makes ~90 of them. sys.argv
    is the user's (argparse and common.fail name the script from it), the working directory is
    the repository, the network is closed by a refusing proxy, stdout and stderr are captured,
    and the exit status is SystemExit's; an uncaught exception leaves its traceback on stderr
    with status 1, as Python would. test_common.py runs real processes too."""
    module = importlib.import_module(Path(script).stem)
    argv = [str(arg) for arg in args]
    out, err, status = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    os.environ.update({**OFFLINE_ENV, "no_proxy": "", "NO_PROXY": ""})
    sys.argv = [script, *argv]
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                common.run_main(module.main, argv)
            except SystemExit as stop:  # exit(2) from argparse; a message from common.fail
                status = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
                if status == 1 and not isinstance(stop.code, int):
                    print(stop.code, file=sys.stderr)
            except Exception:  # noqa: BLE001: what an uncaught error prints, for the tests to see
                traceback.print_exc()
                status = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([script, *argv], status, out.getvalue(), err.getvalue())


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
