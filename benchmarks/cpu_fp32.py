"""What does the plain fp32 CPU path gain from channels_last, torch.compile or the thread count?

Times one training step of each convolutional network of benchmarks/amp.py (VGG11, the conv
VAE, DCGAN's G and D at batch 128; the galaxy conv VAE at its batch of 64) as the scripts run
it and in each variant, calling the two in turn so both see the same machine state, and prints
the median seconds and the ratio scripts / variant (above 1 = the variant is faster):
- channels_last: networks and images in NHWC memory, the layout oneDNN's convolutions prefer;
- torch.compile: the default inductor backend (needs a C++ compiler; its one-off compile time
  is printed apart);
- one thread instead of torch's default of one per core.
Each variant also takes two steps from the same initial weights and random stream as the
scripts' layout, and the largest relative difference of the losses is printed: a variant worth
adopting computes the same thing to fp32 rounding (~1e-6), not just faster.

Run: python benchmarks/cpu_fp32.py
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts live one level up
import common  # noqa: E402
from benchmarks.amp import STEPS, Layout, time_alternating  # noqa: E402

VARIANTS = {"channels_last": Layout(channels_last=True), "torch.compile": Layout(compiled=True)}


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=common.positive_int, default=10,
                        help="timed training steps per model and variant (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=common.positive_int, default=128,
                        help="minibatch size (the galaxy VAE always uses its own 64)")
    parser.add_argument("--models", default=",".join(STEPS),
                        help=f"comma-separated, from: {', '.join(STEPS)}")
    return parser.parse_args(argv)


def build(make, batch_size, layout):
    """A step function from the same initial weights and data, whatever the layout."""
    torch.manual_seed(0)
    return make(batch_size, layout)


def loss_difference(make, batch_size, layout, steps=2):
    """Largest relative difference of the losses of `steps` fp32 steps, layout vs the scripts',
    each from the same weights and the same random stream (dropout). Two steps: the loss before
    and after one update (the galaxy VAE on random images diverges from the third)."""
    losses = []
    for each in (Layout(), layout):
        step = build(make, batch_size, each)
        torch.manual_seed(1)
        losses.append([step(False) for _ in range(steps)])
    return max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(*losses))


def report(name, label, seconds, base, variant, extra=""):
    print(f"  {name:15} {label:14} {seconds[base]:.3f} s -> {seconds[variant]:.3f} s | "
          f"ratio {seconds[base] / seconds[variant]:.2f}x{extra}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    print(" | ".join(f"{k} {v}" for k, v in common.versions().items()))
    print(f"one fp32 training step on the CPU ({threads} threads), median of {args.steps}; "
          f"scripts' layout -> variant:")
    for name in args.models.split(","):
        make = STEPS[name.strip()]
        for label, layout in VARIANTS.items():
            started = time.perf_counter()
            base, variant = build(make, args.batch_size, Layout()), build(make, args.batch_size, layout)
            variant(False)  # the first call compiles, where compiling is asked for
            first = time.perf_counter() - started
            seconds = time_alternating({"base": lambda: base(False), "variant": lambda: variant(False)},
                                       args.steps)
            difference = loss_difference(make, args.batch_size, layout)
            compile_note = f" (build and first step {first:.0f} s)" if layout.compiled else ""
            report(name, label, seconds, "base", "variant",
                   f" | losses differ by {difference:.1e}{compile_note}")
        base = build(make, args.batch_size, Layout())

        def with_threads(n):
            torch.set_num_threads(n)
            base(False)

        seconds = time_alternating({threads: lambda: with_threads(threads), 1: lambda: with_threads(1)},
                                   args.steps)
        torch.set_num_threads(threads)
        report(name, "1 thread", seconds, threads, 1)


if __name__ == "__main__":
    main()
