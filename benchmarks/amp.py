"""What does --amp (bf16 autocast) buy on this machine, and what does it cost in accuracy?

1. Times one training step (forward, loss, backward, optimizer step) of the four heaviest
   models, in fp32 and under bf16 autocast, alternating the two so both see the same machine
   state, and prints the ratio fp32 / bf16 (above 1 = autocast is faster): vgg_mnist's VGG11
   (32x32, SGD), vae.py's conv VAE (Adam) and dcgan.py's G and D (Adam) at batch 128,
   galaxy_vae.py's conv VAE (64x64 RGB, Adam) at its batch of 64.
2. Runs each of the three scripts briefly on the real data both ways (same seed, same command
   but --amp) and prints the number each run ends with: VGG11's test accuracy, the conv VAE's
   test reconstruction, the DCGAN's Fréchet distance (by figures/cnn.pt).
Autocast helps where the CPU has bf16 units (AVX-512 BF16 or AMX) or on a GPU; on a CPU without
them (AVX2 only) it is emulated, 25-50x slower, and the scripts refuse --amp training there. To
see what this CPU is: python -c "import common; print(common.versions())" (cpu_bf16).

Run: python benchmarks/amp.py --data-dir ../shared/data
"""
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts live one level up
import common  # noqa: E402
import dcgan  # noqa: E402
import galaxy_vae  # noqa: E402
import vae  # noqa: E402
import vgg_mnist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=common.positive_int, default=10,
                        help="timed training steps per model and precision (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=common.positive_int, default=128, help="minibatch size")
    parser.add_argument("--data-dir", default="data", help="dataset root for the short real runs "
                                                           "(MNIST and Fashion-MNIST)")
    parser.add_argument("--skip-runs", action="store_true", help="time the steps only")
    return parser.parse_args(argv)


@dataclass
class Layout:
    """How a step's networks and images are laid out: channels_last memory (NHWC, the layout
    oneDNN's convolutions prefer), and/or torch.compile. The default is the scripts' own."""
    channels_last: bool = False
    compiled: bool = False

    def module(self, module):
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)  # in place: same parameters
        return torch.compile(module) if self.compiled else module

    def images(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# One training step per model, written as each script's loop writes it; `amp` toggles autocast.
# Each step returns its loss, so two layouts can be checked to compute the same thing.
def vgg_step(batch_size, layout=Layout()):
    model = vgg_mnist.VGG11()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    net = layout.module(model)
    x, y = layout.images(torch.randn(batch_size, 1, 32, 32)), torch.randint(0, 10, (batch_size,))

    def step(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = vgg_mnist.classification_loss(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def vae_step(batch_size, layout=Layout()):
    model = vae.ConvVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    net, x = layout.module(model), layout.images(torch.rand(batch_size, 1, 28, 28))
    generator = torch.Generator().manual_seed(0)

    def step(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits, mu, logvar = net(x, generator)
            loss = vae.reconstruction_loss(logits, x, "bce") + vae.kl_divergence(mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def dcgan_step(batch_size, layout=Layout()):
    G, D = dcgan.Generator(), dcgan.Discriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g, d = layout.module(G), layout.module(D)
    real, z = layout.images(torch.rand(batch_size, 1, 28, 28) * 2 - 1), torch.randn(batch_size, dcgan.NZ)

    def step(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            fake = g(z)
            loss_d = dcgan.discriminator_loss(d(real), d(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss_g = dcgan.generator_loss(d(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        return loss_d.item() + loss_g.item()
    return step


def galaxy_step(batch_size, layout=Layout()):
    """galaxy_vae.py's conv VAE on 64x64 RGB at its default batch of 64 (whatever batch_size says:
    the galaxy runs use 64)."""
    model = galaxy_vae.GalaxyVAE("conv")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    net, x = layout.module(model), layout.images(torch.rand(64, 3, 64, 64))
    generator = torch.Generator().manual_seed(0)

    def step(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits, mu, logvar = net(x, None, generator)
            loss = galaxy_vae.vae_loss(logits, x, mu, logvar, 1.0)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


STEPS = {"VGG11": vgg_step, "conv VAE": vae_step, "DCGAN G+D": dcgan_step,
         "galaxy conv VAE": galaxy_step}


def time_alternating(calls, steps):
    """Median seconds of each of `calls` ({name: function}), called in turn `steps` times after
    two warm-up rounds, so that every one sees the same machine state."""
    for _ in range(2):
        for call in calls.values():
            call()
    times = {name: [] for name in calls}
    for _ in range(steps):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def time_step(step, steps):
    """Median seconds per step for fp32 (False) and bf16 (True)."""
    return time_alternating({False: lambda: step(False), True: lambda: step(True)}, steps)


# Short real-data runs through the scripts themselves: (script, flags, final key); each writes its
# one run into a folder of its own, under the name its knobs give it (common.run_name)
RUNS = [
    (vgg_mnist, ["--subset", "0.05", "--epochs", "3"], "test_acc"),
    (vae, ["--arch", "conv", "--epochs", "1", "--limit", "10000"], "test_recon"),
    (dcgan, ["--epochs", "1", "--limit", "10000", "--cnn-weights", str(ROOT / "figures" / "cnn.pt")],
     "frechet_distance"),
]


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    print(" | ".join(f"{k} {v}" for k, v in common.versions().items()))
    print(f"one training step at batch {args.batch_size} on the CPU, median of {args.steps}:")
    for name, make in STEPS.items():
        seconds = time_step(make(args.batch_size), args.steps)
        print(f"  {name:15} fp32 {seconds[False]:.3f} s | bf16 autocast {seconds[True]:.3f} s | "
              f"ratio {seconds[False] / seconds[True]:.2f}x", flush=True)
    if args.skip_runs:
        return
    if not common.cpu_computes_bf16():
        print("short real-data runs skipped: this CPU has no bf16 units, so the scripts refuse "
              "--amp training here")
        return
    print("short real-data runs, the same command without and with --amp:")
    with tempfile.TemporaryDirectory() as out:
        for script, flags, key in RUNS:
            results = {}
            for amp in (False, True):
                folder = Path(out) / f"{script.__name__}_{amp}"
                started = time.perf_counter()
                script.main([*flags, "--data-dir", args.data_dir, "--out-dir", str(folder),
                             "--device", "cpu", *(["--amp"] if amp else [])])
                (metrics,) = folder.glob("*_metrics.json")
                final = json.loads(metrics.read_text())["final"]
                results[amp] = (final[key], time.perf_counter() - started)
            print(f"  {script.__name__} {' '.join(flags)}: {key} fp32 {results[False][0]:.4f} "
                  f"({results[False][1]:.0f} s) | --amp {results[True][0]:.4f} "
                  f"({results[True][1]:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
