"""Accuracy of an exported disease model on its run's test split under field-photo perturbations.

Each perturbation is applied to the original photo, which then goes through the same
``shared.image.decode_image`` as on a device; the table gives accuracy and the ratio against the
clean images (the baseline), for the fp32 and int8 files of the manifest.

    python bench/disease_robustness.py RUN_DIR            # uses RUN_DIR/export/manifest.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _jpeg(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _zoom_out(img: Image.Image) -> Image.Image:
    """The leaf smaller in the frame, on a soil-coloured surround."""
    w, h = img.size
    canvas = Image.new("RGB", (int(w * 1.6), int(h * 1.6)), (105, 80, 60))
    canvas.paste(img, ((canvas.width - w) // 2, (canvas.height - h) // 2))
    return canvas


PERTURBATIONS = {
    "clean (re-saved q=95)": lambda im: _jpeg(im, 95),
    "rotate 90": lambda im: _jpeg(im.rotate(90, expand=True), 95),
    "rotate 35": lambda im: _jpeg(im.rotate(35, fillcolor=(105, 80, 60)), 95),
    "darker x0.6": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.6), 95),
    "brighter x1.4": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.4), 95),
    "blur r=2": lambda im: _jpeg(im.filter(ImageFilter.GaussianBlur(2)), 95),
    "jpeg q=30": lambda im: _jpeg(im, 30),
    "zoom out 1.6x": lambda im: _jpeg(_zoom_out(im), 95),
    "upscaled 3x (camera res)": lambda im: _jpeg(im.resize((im.width * 3, im.height * 3), Image.BICUBIC), 90),
}


def main() -> int:
    import onnxruntime as ort

    from cloud_trainer.disease import dataset as ds
    from shared.image import decode_image
    from shared.manifest import ModelManifest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--manifest", type=Path, default=None)
    args = p.parse_args()
    manifest_path = args.manifest or args.run_dir / "export" / "manifest.json"
    manifest = ModelManifest.load(manifest_path)
    size = (manifest.preprocessing.height, manifest.preprocessing.width)
    info = json.loads((args.run_dir / "run.json").read_text())
    data = ds.load_dataset(info["data"], min_per_class=1)
    test = ds.load_split(args.run_dir / "split.csv", data)["test"]
    labels = np.array([manifest.labels.index(s.label) for s in test])
    photos = [Image.open(s.path).convert("RGB") for s in test]
    sessions = {
        f.variant: ort.InferenceSession(str(manifest_path.parent / f.path), providers=["CPUExecutionProvider"])
        for f in manifest.files
    }
    rows = []
    for name, perturb in PERTURBATIONS.items():
        batch = np.stack([decode_image(perturb(im), size) for im in photos])
        row = [name]
        for sess in sessions.values():
            probs = sess.run(None, {"image": batch})[0]
            row += [float((probs.argmax(1) == labels).mean()), float(probs.max(1).mean())]
        rows.append(row)
    print(f"\n{manifest.name} {manifest.version}: {len(test)} test images of {args.run_dir}")
    head = f"{'perturbation':<26}" + "".join(f"{v + ' acc':>10}{'vs clean':>10}{'mean conf':>11}" for v in sessions)
    print(head)
    print("-" * len(head))
    for row in rows:
        line = f"{row[0]:<26}"
        for i in range(len(sessions)):
            acc, conf = row[1 + 2 * i], row[2 + 2 * i]
            base = rows[0][1 + 2 * i]
            line += f"{acc:>10.3f}{acc / base if base else 0:>9.2f}x{conf:>11.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
