"""How much faster is the device-resident data path than the usual tutorial pipeline?

Trains cnn.py's model (same optimizer, batch size and number of steps) two ways in one run:
- tutorial: torchvision.datasets.FashionMNIST + transforms.ToTensor() + DataLoader(shuffle=True),
  each batch copied to the device (num_workers=0, the tutorials' default);
- resident: common.load_mnist_like (the whole set on the device, uint8 → float once) and
  batches cut by index with torch.randperm, as every script here does.
It prints seconds per epoch for each and their ratio, on the CPU and, when present, on CUDA.

Run: python benchmarks/data_path.py --data-dir ../shared/data
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts live one level up
import cnn  # noqa: E402
import common  # noqa: E402


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="dataset root (as for the scripts)")
    parser.add_argument("--epochs", type=common.positive_int, default=2,
                        help="timed epochs per pipeline (the first one includes warm-up)")
    parser.add_argument("--batch-size", type=common.positive_int, default=128, help="minibatch size")
    parser.add_argument("--limit", type=common.positive_int,
                        help="use only the first N training images (quick checks)")
    parser.add_argument("--devices", default=None,
                        help="comma-separated devices to measure (default: cpu, plus cuda if present)")
    return parser.parse_args(argv)


def train_steps(model, optimizer, batches, device):
    """Plain training steps over an iterable of (images, labels); returns the step count."""
    steps = 0
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return steps


def seconds_per_epoch(make_batches, args, device):
    torch.manual_seed(0)
    model = cnn.CNN().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    timer = common.Timer(device)
    for _ in range(args.epochs):
        train_steps(model, optimizer, make_batches(), device)
    return timer.seconds() / args.epochs


def measure(device, args):
    dataset = common.open_dataset("fashion-mnist", args.data_dir, train=True)
    dataset.transform = torchvision.transforms.ToTensor()  # PIL image -> (1, 28, 28) float, per sample
    if args.limit:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                        pin_memory=device.type == "cuda")
    tutorial = seconds_per_epoch(lambda: iter(loader), args, device)

    (x, y), _ = common.load_mnist_like("fashion-mnist", args.data_dir, device, args.limit)
    generator = torch.Generator().manual_seed(0)
    resident = seconds_per_epoch(
        lambda: ((x[i], y[i]) for i in common.batch_indices(len(x), args.batch_size, device,
                                                             generator)), args, device)
    print(f"{device.type:>4} | tutorial DataLoader {tutorial:7.2f} s/epoch | "
          f"device-resident {resident:7.2f} s/epoch | speed-up {tutorial / resident:5.2f}x")


def main(argv=None):
    args = parse_args(argv)
    names = args.devices.split(",") if args.devices else ["cpu"] + ["cuda"] * torch.cuda.is_available()
    print(f"cnn.py model, batch {args.batch_size}, {args.epochs} epochs per pipeline, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for name in names:
        measure(common.pick_device(name.strip()), args)


if __name__ == "__main__":
    main()
