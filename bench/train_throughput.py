"""Training throughput (images/s) for one architecture and batch size on the current device.

Runs forward + backward + AdamW steps on random pixels with bf16 autocast and channels_last each
on and off, and prints a table with the ratio against the plain run (both off), measured in the
same process. Short by design (well under 3 minutes on a GPU):

    python bench/train_throughput.py --arch tf_efficientnet_lite0 --batch-size 64
    python bench/train_throughput.py --arch resnet18 --batch-size 16 --size 128 --steps 5   # CPU
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch
    from torch import nn

    from cloud_trainer.disease.models import MODEL_REGISTRY, build_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="tf_efficientnet_lite0", choices=sorted(MODEL_REGISTRY))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x_cpu = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)
    results = []
    for amp, cl in itertools.product((False, True), (False, True)):
        torch.manual_seed(0)
        model, _ = build_model(args.arch, args.classes, "none")
        model.to(device).train()
        x = x_cpu.to(device)
        if cl:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = nn.CrossEntropyLoss()

        def step(model=model, x=x, opt=opt, amp=amp, loss_fn=loss_fn) -> None:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        results.append((amp, cl, args.steps * args.batch_size / elapsed))
        print(f"  done amp={amp} channels_last={cl}", file=sys.stderr, flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.arch}  batch {args.batch_size}  {args.size}x{args.size}  on {name}  torch {torch.__version__}")
    header = f"{'bf16 autocast':<15}{'channels_last':<15}{'img/s':>10}{'vs plain':>10}"
    print(header)
    print("-" * len(header))
    base = results[0][2]
    for amp, cl, ips in results:
        print(f"{'on' if amp else 'off':<15}{'on' if cl else 'off':<15}{ips:>10.1f}{ips / base:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
