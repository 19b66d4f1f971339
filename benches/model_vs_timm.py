"""ResNet-RS training and inference throughput: selftrain (tch) against timm
in PyTorch eager (and torch.compile on CUDA), same architecture, batch,
resolution and thread count, run one after the other by this script.

    bash scripts/setup.sh && bash scripts/bench-setup.sh && cargo build
    .venv-bench/bin/python benches/model_vs_timm.py --threads 2

Each comparison runs in both memory orders, the same on both sides:
contiguous NCHW (PyTorch's default) and channels-last (timm's model and
input `.to(memory_format=torch.channels_last)`, selftrain's
`--channels-last`, i.e. `optim.channels_last`).

Prints a table of images/s and the ratio selftrain / timm. On a machine with
a CUDA GPU, `--device cuda --bf16` measures training steps in bfloat16
autocast (timm eager and torch.compile) against selftrain.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import time
from functools import partial

import timm
import torch
from timm.layers import get_attn
from timm.models.resnet import Bottleneck, ResNet

ROOT = pathlib.Path(__file__).resolve().parents[1]


def small_member():
    # selftrain's Fashion-MNIST teacher: resnet-rs-50 depth 1-1-1-1, width
    # 0.25, small-input form (first stem conv with stride 1).
    m = ResNet(block=Bottleneck, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=8,
               stem_type="deep", replace_stem_pool=True, avg_down=True,
               block_args=dict(attn_layer=partial(get_attn("se"), rd_ratio=0.25)), num_classes=10, in_chans=1)
    m.conv1[0].stride = (1, 1)
    return m


CONFIGS = {
    "resnet-rs-50": dict(make=lambda: timm.create_model("resnetrs50", num_classes=1000), channels=3, classes=1000,
                         resolution=160, batch=16,
                         ours=["--arch", "resnet-rs-50", "--channels", "3", "--num-classes", "1000"]),
    "small-member": dict(make=small_member, channels=1, classes=10, resolution=28, batch=128,
                         ours=["--arch", "resnet-rs-50", "--depth", "1,1,1,1", "--width", "0.25", "--small-input",
                               "--channels", "1", "--num-classes", "10"]),
}


def timed(steps, warmup, images, fn, device):
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * images / (time.perf_counter() - start)


def torch_figures(cfg, args, channels_last, compiled=False):
    torch.manual_seed(0)
    model = cfg["make"]().to(args.device)
    x = torch.randn(cfg["batch"], cfg["channels"], cfg["resolution"], cfg["resolution"], device=args.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(cfg["classes"], (cfg["batch"],), device=args.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)
    run = torch.compile(model) if compiled else model
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(run(x), y)
        loss.backward()
        opt.step()

    model.train()
    train = timed(args.steps, args.warmup, cfg["batch"], train_step, args.device)
    model.eval()
    with torch.no_grad():
        evaluate = timed(args.steps * 2, args.warmup, cfg["batch"], lambda: run(x), args.device)
    return train, evaluate


def ours(cfg, args, channels_last):
    cmd = [str(args.selftrain), "--quiet", "bench", "model", *cfg["ours"], "--resolution", str(cfg["resolution"]),
           "--batch", str(cfg["batch"]), "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device]
    if channels_last:
        cmd.append("--channels-last")
    if args.device != "cpu":
        cmd.append("--no-onnx")
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="timm in bfloat16 autocast (CUDA)")
    p.add_argument("--configs", default="small-member,resnet-rs-50")
    p.add_argument("--formats", default="contiguous,channels-last")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternate timm and selftrain this many times and report the medians (the machine is shared)")
    p.add_argument("--selftrain", default=ROOT / "target" / "debug" / "selftrain")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, device {args.device}")
    print(f"{'model':<14} {'batch':>5} {'res':>4} {'memory':<14} {'what':<24} {'timm':>9} {'selftrain':>10} {'ratio':>6}")
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        for fmt in args.formats.split(","):
            cl = fmt == "channels-last"
            runs = [(torch_figures(cfg, args, cl), ours(cfg, args, cl)) for _ in range(args.repeats)]
            t_train = statistics.median(t[0] for t, _ in runs)
            t_eval = statistics.median(t[1] for t, _ in runs)
            o = {key: statistics.median(r[key] for _, r in runs)
                 for key in ["train_images_per_second", "eval_images_per_second", "onnx_images_per_second"]
                 if all(r.get(key) for _, r in runs)}
            row = lambda what, a, b: print(
                f"{name:<14} {cfg['batch']:>5} {cfg['resolution']:>4} {fmt:<14} {what:<24} {a:>9.1f} {b:>10.1f} "
                f"{b / a:>6.2f}", flush=True)
            row("train step images/s", t_train, o["train_images_per_second"])
            row("eval forward images/s", t_eval, o["eval_images_per_second"])
            if o.get("onnx_images_per_second"):
                row("onnxruntime vs tch eval", o["eval_images_per_second"], o["onnx_images_per_second"])
            if args.device == "cuda":
                c_train, _ = torch_figures(cfg, args, cl, compiled=True)
                row("train, torch.compile", c_train, o["train_images_per_second"])


if __name__ == "__main__":
    main()
