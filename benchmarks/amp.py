"""What does --amp (bf16 autocast) buy on this machine, and what does it cost in accuracy?

1. Times one training step (forward, loss, backward, optimizer step) of the three heaviest
   models at batch 128, in fp32 and under bf16 autocast, alternating the two so both see the
   same machine state, and prints the ratio fp32 / bf16 (above 1 = autocast is faster):
   vgg_mnist's VGG11 (32x32, SGD), vae.py's conv VAE (Adam) and dcgan.py's G and D (Adam).
2. Runs each of the three scripts briefly on the real data both ways (same seed, same command
   but --amp) and prints the number each run ends with: VGG11's test accuracy, the conv VAE's
   test reconstruction, the DCGAN's Fréchet distance (by figures/cnn.pt).
Autocast helps where the CPU has bf16 matrix units (AVX-512 BF16 or AMX) or on a GPU; elsewhere
it can be slower than fp32.

Run: python benchmarks/amp.py --data-dir ../shared/data
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts live one level up
import common  # noqa: E402
import dcgan  # noqa: E402
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


# One training step per model, written as each script's loop writes it; `amp` toggles autocast.
def vgg_step(batch_size):
    model = vgg_mnist.VGG11()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch_size, 1, 32, 32), torch.randint(0, 10, (batch_size,))

    def step(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = vgg_mnist.classification_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def vae_step(batch_size):
    model = vae.ConvVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, generator = torch.rand(batch_size, 1, 28, 28), torch.Generator().manual_seed(0)

    def step(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits, mu, logvar = model(x, generator)
            loss = vae.reconstruction_loss(logits, x, "bce") + vae.kl_divergence(mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def dcgan_step(batch_size):
    G, D = dcgan.Generator(), dcgan.Discriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real, z = torch.rand(batch_size, 1, 28, 28) * 2 - 1, torch.randn(batch_size, dcgan.NZ)

    def step(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            fake = G(z)
            loss_d = dcgan.discriminator_loss(D(real), D(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss_g = dcgan.generator_loss(D(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    return step


def time_step(step, steps):
    """Median seconds per step for fp32 and bf16, measured alternately after a warm-up."""
    for amp in (False, True, False, True):
        step(amp)
    times = {False: [], True: []}
    for _ in range(steps):
        for amp in (False, True):
            start = time.perf_counter()
            step(amp)
            times[amp].append(time.perf_counter() - start)
    return {amp: sorted(t)[len(t) // 2] for amp, t in times.items()}


# Short real-data runs through the scripts themselves: (script, flags, folder label, final key)
RUNS = [
    (vgg_mnist, ["--subset", "0.05", "--epochs", "3"], "vgg_mnist_subset0.05", "test_acc"),
    (vae, ["--arch", "conv", "--epochs", "1", "--limit", "10000"], "vae_conv", "test_recon"),
    (dcgan, ["--epochs", "1", "--limit", "10000", "--cnn-weights", str(ROOT / "figures" / "cnn.pt")],
     "dcgan", "frechet_distance"),
]


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    print(f"one training step at batch {args.batch_size} on the CPU, median of {args.steps}:")
    for name, make in (("VGG11", vgg_step), ("conv VAE", vae_step), ("DCGAN G+D", dcgan_step)):
        seconds = time_step(make(args.batch_size), args.steps)
        print(f"  {name:10} fp32 {seconds[False]:.3f} s | bf16 autocast {seconds[True]:.3f} s | "
              f"ratio {seconds[False] / seconds[True]:.2f}x", flush=True)
    if args.skip_runs:
        return
    print("short real-data runs, the same command without and with --amp:")
    with tempfile.TemporaryDirectory() as out:
        for script, flags, run, key in RUNS:
            results = {}
            for amp in (False, True):
                folder = Path(out) / f"{run}_{amp}"
                started = time.perf_counter()
                script.main([*flags, "--data-dir", args.data_dir, "--out-dir", str(folder),
                             "--device", "cpu", *(["--amp"] if amp else [])])
                [metrics] = folder.glob("*_metrics.json")  # its name carries the run's knobs (issue 24)
                final = json.loads(metrics.read_text())["final"]
                results[amp] = (final[key], time.perf_counter() - started)
            print(f"  {script.__name__} {' '.join(flags)}: {key} fp32 {results[False][0]:.4f} "
                  f"({results[False][1]:.0f} s) | --amp {results[True][0]:.4f} "
                  f"({results[True][1]:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
