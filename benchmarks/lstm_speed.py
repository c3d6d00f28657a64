"""How long do lstm_tweets.py's 100,000 iterations take here, and what do packing and buckets cost?

It measures speed only, on synthetic tweets of random printable ASCII whose lengths are uniform
in 10..174 characters (SemEval-2017's training tweets average 115, at most 174). It writes them
to a temporary folder and:
1. runs lstm_tweets.py itself for --iterations minibatches (one evaluation at the end), and
   prints the seconds per 1000 iterations and the projection to 100,000;
2. times one training step (forward, NLL, backward, Adam) of the same LSTM three ways, each on
   --steps minibatches of 32:
   - packed: random minibatches through packed sequences (CharLSTM.forward_packed, the LSTM
     stops at each tweet's last character), the reference;
   - padded+gather: the same minibatches zero-padded to their longest tweet, each tweet's output
     read at its last character (CharLSTM.forward; the same numbers, a test checks);
   - bucketed: padded+gather on minibatches as lstm_tweets.py draws them (bucketed_order, the
     default --bucket), so each is padded only to the longest of 32 similar lengths;
   and prints the milliseconds per iteration of each, the mean padded width, and each one's
   speed-up over packed.
Accuracy numbers from this run mean nothing (the labels are random) and are not reported.

Run: python benchmarks/lstm_speed.py
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts live one level up
import common  # noqa: E402
import lstm_tweets  # noqa: E402


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=common.positive_int, default=2000,
                        help="training iterations to time through lstm_tweets.py")
    parser.add_argument("--steps", type=common.positive_int, default=200,
                        help="training steps timed for each of packed, padded+gather and bucketed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="auto picks cuda, then mps, then cpu")
    return parser.parse_args(argv)


def synthetic_file(path, n, generator):
    """n tweets of random printable ASCII (no quotes or commas), random 0/1 labels."""
    alphabet = "abcdefghijklmnopqrstuvwxyz     ABCDEFGHIJ0123456789!?.:)(@#"
    lengths = torch.randint(10, 175, (n,), generator=generator)
    letters = torch.randint(0, len(alphabet), (int(lengths.sum()),), generator=generator).tolist()
    labels = torch.randint(0, 2, (n,), generator=generator).tolist()
    rows, start = ["text,label"], 0
    for length, label in zip(lengths.tolist(), labels):
        rows.append("".join(alphabet[i] for i in letters[start:start + length]).strip() + f",{label}")
        start += length
    path.write_text("\n".join(rows) + "\n")
    return path


def time_steps(model, forward, batches, device):
    """Seconds per training step (forward, NLL, backward, Adam) over `batches`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    timer = common.Timer(device)
    for codes, lengths, labels in batches:
        loss = lstm_tweets.nll_loss(forward(codes, lengths), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return timer.seconds() / len(batches)


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    generator = common.seed_everything(0)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        train = synthetic_file(folder / "train.csv", 20000, generator)
        test = synthetic_file(folder / "test.csv", 500, generator)
        lstm_tweets.main(["--train-csv", str(train), "--test-csv", str(test), "--out-dir",
                          str(folder / "out"), "--device", device.type, "--iterations",
                          str(args.iterations), "--eval-every", str(args.iterations)])
        (path,) = (folder / "out").glob("lstm_tweets*_metrics.json")  # named after its knobs
        metrics = json.loads(path.read_text())
        seconds = metrics["wall_seconds"]
        split, *_ = lstm_tweets.load_split([train], lstm_tweets.parse_args(["--train-csv", str(train)]),
                                          device)
    per_1000 = 1000 * seconds / args.iterations
    print(f"lstm_tweets.py: {per_1000:.1f} s per 1000 iterations on {device} "
          f"(one evaluation included) → 100,000 iterations ≈ {100 * per_1000 / 60:.0f} min")

    n, size = len(split[2]), 32
    random = [torch.randint(0, n, (size,), generator=generator) for _ in range(args.steps)]
    order = lstm_tweets.bucketed_order(split[1], size, 50, generator)
    buckets = [order[i * size:(i + 1) * size] for i in range(args.steps)]
    padded = [lstm_tweets.batch(split, idx) for idx in random]
    bucketed = [lstm_tweets.batch(split, idx) for idx in buckets]
    # packing wants the lengths on the CPU: handed over there, so that no device-to-host copy
    # is counted against it
    packed = [(codes, lengths.cpu(), labels) for codes, lengths, labels in padded]
    model = lstm_tweets.CharLSTM().to(device)
    ways = {"packed": (model.forward_packed, packed), "padded+gather": (model, padded),
            "bucketed": (model, bucketed)}
    for forward, batches in ways.values():  # warm-up
        time_steps(model, forward, batches[:10], device)
    ms = {name: 1000 * time_steps(model, forward, batches, device)
          for name, (forward, batches) in ways.items()}
    for name, (_, batches) in ways.items():
        width = sum(codes.shape[1] for codes, _, _ in batches) / len(batches)
        print(f"one training step, {name:>13}: {ms[name]:6.1f} ms per iteration (mean padded width "
              f"{width:.0f}); packed / {name} = {ms['packed'] / ms[name]:.2f}")
    print(f"100,000 iterations, steps only: packed ≈ {ms['packed'] * 100 / 60:.0f} min, "
          f"bucketed ≈ {ms['bucketed'] * 100 / 60:.0f} min")

if __name__ == "__main__":
    main()
