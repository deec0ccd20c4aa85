"""Leaf-disease inference speed: torch eager vs onnxruntime fp32 vs onnxruntime int8, in one run.

For each architecture: export the uint8-NHWC probability model, quantise it statically (calibrated
on synthetic leaves), and time batch 1 and batch 8 on the same thread count. The table gives
latency per image, images/s, and the ratios against torch eager (the baseline) and int8/fp32.

    python bench/disease_inference.py                      # all registry archs, 2 threads
    python bench/disease_inference.py --arch tf_efficientnet_lite0 --threads 2 --run RUN_DIR

Target: onnxruntime fp32 >= 3x torch eager at batch 1 on 2 threads for tf_efficientnet_lite0 and
mobilenetv3_large_100. Weights are random unless --run names a trained run (speed does not depend
on them; int8 accuracy does, which the export measures).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_ARCHS = ("tf_efficientnet_lite0", "mobilenetv3_large_100")


def _time_interleaved(fns: dict, min_seconds: float, min_rounds: int = 5, block: int = 8) -> dict[str, float]:
    """Median seconds per call of each function, run in blocks, backend after backend, round after round.

    Alternating blocks puts every backend under the same background load (the CPU may be shared);
    the first call of each block is dropped, so one backend's idle threads (onnxruntime spins a
    moment after a run, as it does in the agent) do not bill the next backend; the median drops
    calls that another process interrupted.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_seconds * len(fns):
        for name, fn in fns.items():
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> int:
    import torch

    from cloud_trainer.disease import synth
    from cloud_trainer.disease.export import (
        INPUT_NAME,
        OUTPUT_NAME,
        build_probability_model,
        export_onnx,
        load_run,
        ort_session,
        quantize_int8,
    )
    from cloud_trainer.disease.models import MODEL_REGISTRY
    from shared.image import decode_image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", choices=sorted(MODEL_REGISTRY), help="repeatable; default all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=1.5, help="minimum timing per cell")
    p.add_argument("--run", type=Path, default=None, help="use this trained run's weights (its arch only)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.run:
            loaded = load_run(args.run)
            models = {loaded.info["arch"]: loaded.model}
            args.size = loaded.image_size
        else:
            models = {a: build_probability_model(a, num_classes=9) for a in (args.arch or sorted(MODEL_REGISTRY))}
        synth.generate(tmp / "leaves", classes=4, per_class=8, size=args.size, progress=False)
        images = np.stack([decode_image(f.read_bytes(), args.size) for f in sorted((tmp / "leaves").glob("*/*.jpg"))])
        rows = []
        for arch, model in models.items():
            print(f"[{arch}] exporting and quantising ...", file=sys.stderr, flush=True)
            fp32 = export_onnx(model, tmp / f"{arch}.onnx", args.size)
            int8 = quantize_int8(fp32, tmp / f"{arch}.int8.onnx", images)
            sessions = {"ort fp32": ort_session(fp32, args.threads), "ort int8": ort_session(int8, args.threads)}
            for batch in args.batches:
                x = np.resize(images, (batch, args.size, args.size, 3)).astype(np.uint8)
                xt = torch.from_numpy(x)
                fns = {"torch eager": lambda m=model, t=xt: m(t)}
                for name, sess in sessions.items():
                    fns[name] = lambda s=sess, b=x: s.run([OUTPUT_NAME], {INPUT_NAME: b})
                with torch.inference_mode():
                    cells = _time_interleaved(fns, args.seconds)
                base = cells["torch eager"]
                for name, sec in cells.items():
                    rows.append(
                        (arch, batch, name, sec * 1000 / batch, batch / sec, base / sec, cells["ort fp32"] / sec)
                    )

    print(f"\nthreads={args.threads}  input={args.size}x{args.size}  torch {torch.__version__}")
    header = f"{'arch':<24}{'batch':>6}  {'backend':<12}{'ms/img':>9}{'img/s':>9}{'vs torch':>10}{'vs fp32':>9}"
    print(header)
    print("-" * len(header))
    for arch, batch, name, ms, ips, vs_torch, vs_fp32 in rows:
        print(f"{arch:<24}{batch:>6}  {name:<12}{ms:>9.2f}{ips:>9.1f}{vs_torch:>9.2f}x{vs_fp32:>8.2f}x")
    print()
    for arch in models:
        if arch in TARGET_ARCHS:
            r = next(r for r in rows if r[0] == arch and r[1] == 1 and r[2] == "ort fp32")
            verdict = "met" if r[5] >= 3 else "NOT met"
            print(f"target ort fp32 >= 3x torch eager at batch 1, {arch}: {r[5]:.2f}x  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
