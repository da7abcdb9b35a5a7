#!/usr/bin/env python
"""Make padim/sample_data/cookies_small: a small, downscaled subset of the cookie dataset for the
demo, shipped inside the package as package data.

Source: an MVTec-AD-layout copy of the 'cookie-dataset' of aws-samples/amazon-lookout-for-vision
(CC BY-SA 4.0), by default at ../shared/data/cookies relative to the repository root:

    train/good/*.jpg, test/good/*.jpg, test/crack/*.jpg, ground_truth/crack/<name>_mask.png

Output (same layout, same file names):
- all train/good and all test/good images;
- ``--n-defect`` (12) test/crack images with their masks, chosen deterministically to span the
  range of defect sizes: the cracks sorted by mask area (ties by name), then the ones at
  evenly spaced ranks (smallest and largest included);
- images downscaled by ``--scale`` (0.5) with INTER_AREA and saved as JPEG (``--quality`` 90)
  when the source is JPEG, else PNG; re-encoding also drops the photos' EXIF metadata
  (camera model, GPS position);
- masks downscaled with INTER_NEAREST and re-binarised to 0/255, PNG;
- LICENSE.md with the source's licence text and attribution, and the modification made.

Usage (from the repository root)::

    python datasets/make_cookies_small.py [--source ../shared/data/cookies]
        [--dest padim/sample_data/cookies_small] [--scale 0.5] [--quality 90] [--n-defect 12]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
DEFECT = "crack"


def natural_key(name: str):
    """'anomaly-2' < 'anomaly-10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS),
                  key=lambda p: natural_key(p.name))


def read_mask(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise OSError(f"cannot read mask {path}")
    return m


def mask_path(source: Path, image: Path) -> Path:
    return source / "ground_truth" / DEFECT / f"{image.stem}_mask.png"


def pick_by_size(source: Path, images: Sequence[Path], n: int) -> List[Path]:
    """n images at evenly spaced ranks of defect area (deterministic)."""
    if n >= len(images):
        return list(images)
    areas = [(int((read_mask(mask_path(source, p)) > 127).sum()), natural_key(p.name), p)
             for p in images]
    areas.sort(key=lambda t: (t[0], t[1]))
    ranks = np.round(np.linspace(0, len(areas) - 1, n)).astype(int)
    chosen = [areas[r][2] for r in ranks]
    return sorted(chosen, key=lambda p: natural_key(p.name))


def scaled_size(shape, scale: float):
    h, w = shape[:2]
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))  # cv2 (w, h)


def convert_image(src: Path, dst_dir: Path, scale: float, quality: int) -> Path:
    img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read image {src}")
    small = cv2.resize(img, scaled_size(img.shape, scale), interpolation=cv2.INTER_AREA)
    if src.suffix.lower() in (".jpg", ".jpeg"):
        dst = dst_dir / src.name
        ok = cv2.imwrite(str(dst), small, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        dst = dst_dir / (src.stem + ".png")
        ok = cv2.imwrite(str(dst), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"cannot write {dst}")
    return dst


def convert_mask(src: Path, dst_dir: Path, scale: float) -> Path:
    m = read_mask(src)
    small = cv2.resize(m, scaled_size(m.shape, scale), interpolation=cv2.INTER_NEAREST)
    small = np.where(small > 127, 255, 0).astype(np.uint8)
    dst = dst_dir / src.name
    if not cv2.imwrite(str(dst), small, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {dst}")
    return dst


LICENSE_TEMPLATE = """\
# Licence and attribution: cookies_small

This folder is a **modified subset** of the cookie images and masks from the
`cookie-dataset` of the public repository **aws-samples/amazon-lookout-for-vision**
(`computer-vision-defect-detection/cookie-dataset`,
<https://github.com/aws-samples/amazon-lookout-for-vision>), licensed under the
**Creative Commons Attribution-ShareAlike 4.0 International licence (CC BY-SA 4.0)**,
<https://creativecommons.org/licenses/by-sa/4.0/>.

This subset is distributed under the same licence, **CC BY-SA 4.0**. The rest of this
repository's code is not covered by this notice.

## Source notice (verbatim from the copy this subset was made from)

{source_text}

## Modifications

Made by `datasets/make_cookies_small.py` in this repository:

- subset: all {n_train} `train/good` images, all {n_test_good} `test/good` images and
  {n_defect} of the {n_defect_all} `test/crack` images (with their masks), chosen to span the
  range of defect sizes;
- every image downscaled by a factor of {scale} ({src_w}×{src_h} → {dst_w}×{dst_h} px, area
  interpolation) and re-encoded as JPEG quality {quality} (EXIF metadata removed);
- masks downscaled by the same factor (nearest neighbour) and re-binarised to 0/255 PNG;
- file names unchanged.

Chosen `test/crack` images: {chosen}.
"""


def make(source: Path, dest: Path, scale: float = 0.5, quality: int = 90,
         n_defect: int = 12) -> Dict[str, int]:
    source, dest = Path(source), Path(dest)
    for sub in ("train/good", "test/good", f"test/{DEFECT}", f"ground_truth/{DEFECT}"):
        if not (source / sub).is_dir():
            raise FileNotFoundError(f"{source / sub} not found: is --source an MVTec-layout "
                                    f"copy of the cookie dataset?")
    # Rebuild: remove stale image files from the four layout folders (and nothing else, so a
    # mistaken --dest cannot wipe an unrelated folder).
    for sub in ("train/good", "test/good", f"test/{DEFECT}", f"ground_truth/{DEFECT}"):
        if (dest / sub).is_dir():
            for f in (dest / sub).iterdir():
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                    f.unlink()
    train = list_images(source / "train" / "good")
    test_good = list_images(source / "test" / "good")
    cracks_all = list_images(source / "test" / DEFECT)
    cracks = pick_by_size(source, cracks_all, n_defect)

    out_dirs = {k: dest / k for k in ("train/good", "test/good", f"test/{DEFECT}",
                                      f"ground_truth/{DEFECT}")}
    for d in out_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for p in train:
        convert_image(p, out_dirs["train/good"], scale, quality)
    for p in test_good:
        convert_image(p, out_dirs["test/good"], scale, quality)
    for p in cracks:
        convert_image(p, out_dirs[f"test/{DEFECT}"], scale, quality)
        convert_mask(mask_path(source, p), out_dirs[f"ground_truth/{DEFECT}"], scale)

    sample = cv2.imread(str(train[0]), cv2.IMREAD_UNCHANGED)
    src_h, src_w = sample.shape[:2]
    dst_w, dst_h = scaled_size(sample.shape, scale)
    lic = source / "LICENSE.md"
    source_text = lic.read_text(encoding="utf-8").strip() if lic.exists() else \
        "(the source copy had no LICENSE.md)"
    source_text = "\n".join("> " + line if line else ">" for line in source_text.splitlines())
    (dest / "LICENSE.md").write_text(LICENSE_TEMPLATE.format(
        source_text=source_text, n_train=len(train), n_test_good=len(test_good),
        n_defect=len(cracks), n_defect_all=len(cracks_all), scale=scale, src_w=src_w,
        src_h=src_h, dst_w=dst_w, dst_h=dst_h, quality=quality,
        chosen=", ".join(f"`{p.name}`" for p in cracks)), encoding="utf-8")
    return {"train/good": len(train), "test/good": len(test_good),
            f"test/{DEFECT}": len(cracks),
            "bytes": sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Make the downscaled cookie demo subset.")
    p.add_argument("--source", type=Path, default=REPO_ROOT / ".." / "shared" / "data" / "cookies",
                   help="MVTec-layout cookie dataset (default: ../shared/data/cookies "
                        "relative to the repository root)")
    p.add_argument("--dest", type=Path, default=REPO_ROOT / "padim" / "sample_data" / "cookies_small")
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--n-defect", type=int, default=12, help="number of crack images kept")
    a = p.parse_args(argv)
    if not 0 < a.scale <= 1:
        p.error("--scale must be in (0, 1]")
    info = make(a.source.resolve(), a.dest, a.scale, a.quality, a.n_defect)
    print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
