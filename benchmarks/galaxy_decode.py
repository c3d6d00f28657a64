"""How long do the galaxy images take: the first decode, the cached reads, an epoch per architecture?

Kaggle's training set is 61,578 JPEGs of 424x424; the folder here holds 5,000. This measures, on
the first --images of --images-dir:
1. first-pass decode throughput (open, decode, centre crop --crop, resize to --image-size:
   common.decode_jpeg) with each worker count in --workers, as images per second and as the
   speed-up over the first count (the baseline, same run); projected minutes for 61,578 images;
2. reading the cache back: seconds for these images, projected for 61,578;
3. one training step (forward, BCE + KL, backward, Adam; batch --batch-size) of each
   architecture, fp32 and with --amp (bf16 autocast), as ms per step and seconds per epoch of
   the 4,250 training images here and of the 52,341 (85%) of the full set.

Run: python benchmarks/galaxy_decode.py --images-dir ../shared/data/galaxy/images_training_rev1
"""
import sys
import tempfile
import types
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scripts live one level up
import common  # noqa: E402
import galaxy_vae  # noqa: E402

FULL_SET = 61_578


def parse_args(argv=None):
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--images-dir", required=True, help="folder of <GalaxyID>.jpg")
    parser.add_argument("--images", type=common.positive_int, default=1000, help="JPEGs decoded per worker count")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts; the first is the baseline")
    parser.add_argument("--crop", type=common.positive_int, default=207)
    parser.add_argument("--image-size", type=common.positive_int, default=64)
    parser.add_argument("--batch-size", type=common.positive_int, default=64)
    parser.add_argument("--steps", type=common.positive_int, default=10, help="training steps timed per architecture")
    parser.add_argument("--train-images", type=common.positive_int, default=4250,
                        help="training images here (85%% of 5,000), for the epoch time")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    args = parser.parse_args(argv)
    try:
        args.workers = [common.positive_int(w) for w in args.workers.split(",")]
    except Exception as error:
        parser.error(f"--workers: {error}")
    return args


def decode_rate(files, crop, size, workers):
    """Images per second of galaxy_vae's first pass (common.decode_all) over `files` with `workers`
    processes, and what it decoded."""
    start = time.perf_counter()
    decoded = common.decode_all(files, crop, size, workers)
    return len(files) / (time.perf_counter() - start), decoded


def step_ms(arch, amp, args, images, device):
    """Median milliseconds of one training step of `arch` (after two warm-up steps)."""
    model = galaxy_vae.GalaxyVAE(arch, 50, args.image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    flags = types.SimpleNamespace(amp=amp)  # what common.autocast reads
    times = []
    for step in range(args.steps + 2):
        idx = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        x = galaxy_vae.as_float(images[idx].to(device))
        timer = common.Timer(device)
        with common.autocast(flags, device):
            logits, mu, logvar = model(x, None, generator)
            loss = galaxy_vae.vae_loss(logits, x, mu, logvar, 1.0)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(timer.seconds())
    times = sorted(times[2:])
    return 1000 * times[len(times) // 2]


def main(argv=None):
    args = parse_args(argv)
    device = common.pick_device(args.device)
    folder = Path(args.images_dir)
    if not folder.is_dir():
        common.fail(f"--images-dir {folder} is not a folder")
    files = sorted(folder.glob("*.jpg"))[:args.images]
    if not files:
        common.fail(f"--images-dir {folder} holds no .jpg file")
    print(f"1. first-pass decode of {len(files)} JPEGs (crop {args.crop} → {args.image_size}):")
    baseline = None
    for workers in args.workers:
        rate, decoded = decode_rate(files, args.crop, args.image_size, workers)
        bad = len(decoded["problems"])
        baseline = baseline or rate
        print(f"   {workers} worker{'s' * (workers > 1)}: {rate:7.1f} images/s ({rate / baseline:.2f}x the "
              f"first count) → {FULL_SET / rate / 60:.1f} min for {FULL_SET:,}" + (f"; {bad} unreadable" if bad else ""))
    images, n = decoded["images"], len(decoded["ids"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.pt"
        torch.save({"images": images}, path)
        start = time.perf_counter()
        torch.load(path, weights_only=True)
        seconds = time.perf_counter() - start
    print(f"2. reading the cache: {seconds:.3f} s for {n} images → {seconds * FULL_SET / n:.1f} s for {FULL_SET:,}")
    print(f"3. one training step, batch {args.batch_size}, on {device} (median of {args.steps}):")
    full_train = round(0.85 * FULL_SET)
    for arch in galaxy_vae.ARCHS:
        fp32, amp = (step_ms(arch, a, args, images, device) for a in (False, True))
        for label, ms in (("fp32", fp32), ("amp ", amp)):
            per_image = ms / 1000 / args.batch_size
            print(f"   {arch:6s} {label}: {ms:7.0f} ms/step → epoch {per_image * args.train_images:6.1f} s here, "
                  f"{per_image * full_train / 60:5.1f} min on the full set ({full_train:,} images)"
                  + (f"; fp32 / amp = {fp32 / amp:.2f}" if label == "amp " else ""))


if __name__ == "__main__":
    common.run_main(main)
