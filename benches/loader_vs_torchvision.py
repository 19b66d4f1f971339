"""Data loader throughput: selftrain's loader against PyTorch's DataLoader
with torchvision transforms, doing the same work on the same JPEG files with
the same number of worker processes/threads, run one after the other by this
script.

    bash scripts/setup.sh && bash scripts/bench-setup.sh && cargo build
    .venv-bench/bin/python benches/loader_vs_torchvision.py --workers 2

Two corpora are synthesised once with `selftrain data synth`: Fashion-MNIST
training images re-encoded as JPEG at --size px in a flat folder, as grey
JPEGs and as colour JPEGs (`--colour`: each image painted in two colours).
Both sides decode to RGB. On grey files selftrain resamples one plane and
copies it to the three channels (the same pixels as converting first);
PIL converts to RGB first. Three workloads:

- train: decode, random resized crop to --resolution (bicubic), horizontal
  flip, RandAugment with 2 ops, normalise, batch. selftrain applies each
  chosen op with a probability drawn per image from U(0.2, 0.8), as the
  paper's TensorFlow code does; torchvision applies every chosen op;
- train-p1: the same with selftrain applying every chosen op too
  (`randaugment:2:M:1`), so both sides do the same amount of work;
- eval: decode, resize the short side to resolution / 0.875 and centre crop
  (bicubic), normalise, batch.

Prints images/s for both and the ratio selftrain / torchvision.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "debug" / "selftrain"

SPEC = """name = "bench-jpeg"
format = "folder"
root = "{root}"
channels = 3
height = {res}
width = {res}
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
crop_fraction = 0.875
train_crop = "random-resized"
classes = ["a", "b"]

[splits.unlabelled]
images = "."
labelled = false
"""


class Files(Dataset):
    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


def torchvision_rate(files, transform, workers, batch, images):
    # Cycle through the files so both sides time the same image count.
    order = [files[i % len(files)] for i in range(images + batch)]
    loader = DataLoader(Files(order, transform), batch_size=batch, num_workers=workers, shuffle=False,
                        persistent_workers=False, prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)  # warm-up batch: worker start-up is not timed
    start, n = time.perf_counter(), 0
    for x in it:
        n += x.shape[0]
        if n >= images:
            break
    return n / (time.perf_counter() - start), n


def selftrain_rate(spec, augment, args):
    out = subprocess.run([str(BIN), "bench", "loader", "--spec", str(spec), "--split", "unlabelled",
                          "--resolution", str(args.resolution), "--augment", augment, "--workers", str(args.workers),
                          "--batch", str(args.batch), "--images", str(args.images)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--count", type=int, default=2000, help="JPEG files in the synthesised corpus")
    p.add_argument("--size", type=int, default=256, help="side of the synthesised JPEGs")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3,
                   help="alternate the two loaders this many times per workload and report the medians")
    p.add_argument("--magnitude", type=int, default=15, help="RandAugment magnitude (selftrain's 0..10 scale, 30-bin torchvision scale x3)")
    args = p.parse_args()
    torch.set_num_threads(1)

    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    bicubic = T.InterpolationMode.BICUBIC
    # torchvision's magnitude is a bin index of 31 bins (0..30), three per
    # unit of selftrain's 0..10 scale; magnitudes past 10 are clamped there.
    tv_magnitude = min(30, args.magnitude * 3)
    train = T.Compose([T.RandomResizedCrop(args.resolution, interpolation=bicubic), T.RandomHorizontalFlip(),
                       T.RandAugment(num_ops=2, magnitude=tv_magnitude), T.ToTensor(), norm])
    workloads = {
        "train": (f"randaugment:2:{args.magnitude}", train),
        "train-p1": (f"randaugment:2:{args.magnitude}:1", train),
        "eval": ("none", T.Compose([T.Resize(round(args.resolution / 0.875), interpolation=bicubic),
                                    T.CenterCrop(args.resolution), T.ToTensor(), norm])),
    }
    print(f"corpora: {args.count} JPEG files of {args.size} px each; {args.images} images per run, "
          f"batch {args.batch}, {args.workers} workers, output {args.resolution} px, RandAugment magnitude "
          f"{args.magnitude} (torchvision {tv_magnitude}/30)")
    print(f"{'corpus':<8}{'workload':<10}{'selftrain img/s':>18}{'torchvision img/s':>20}{'ratio':>8}")
    for kind in ["grey", "colour"]:
        corpus = ROOT / "runs" / "bench" / f"jpeg-{kind}-{args.size}-{args.count}"
        if not corpus.is_dir():
            subprocess.run([str(BIN), "data", "synth", "--spec", str(ROOT / "data-specs" / "fashion-mnist.toml"),
                            "--split", "train", "--count", str(args.count), "--size", str(args.size), "--layout", "flat",
                            "--out", str(corpus)] + (["--colour"] if kind == "colour" else []),
                           check=True, capture_output=True)
        files = sorted(str(f) for f in corpus.iterdir() if f.suffix == ".jpg")
        spec = corpus.parent / f"{corpus.name}.toml"
        spec.write_text(SPEC.format(root=corpus, res=args.resolution))
        for name, (augment, transform) in workloads.items():
            pairs = [(selftrain_rate(spec, augment, args)["images_per_second"],
                      torchvision_rate(files, transform, args.workers, args.batch, args.images)[0])
                     for _ in range(args.repeats)]
            rate = statistics.median(a for a, _ in pairs)
            theirs = statistics.median(b for _, b in pairs)
            print(f"{kind:<8}{name:<10}{rate:>18.1f}{theirs:>20.1f}{rate / theirs:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
