#!/usr/bin/env python
"""Convert labelled images into the MVTec AD layout that ``padim eval`` reads.

    OUTPUT/test/good/<image>                      images without a defect
    OUTPUT/test/<defect>/<image>                  defective images
    OUTPUT/ground_truth/<defect>/<stem>_mask.png  their masks, 0 = good, 255 = defect

Three input layouts, one sub-command each:

    folder   OK and NG folders, optionally with a folder of masks named <stem>.png or <stem>_mask.png
    labelme  a folder of labelme JSON files (polygon, rectangle, circle, line, linestrip, point
             shapes) and images; images that no JSON annotates, or whose JSON has no shapes, are good
    coco     a COCO JSON with polygon or RLE (uncompressed or compressed) segmentations; listed images
             without annotations are good

The defect type is the label (labelme) or category name (COCO); an image with several is
'combined' (as in MVTec AD); ``--defect-type NAME`` puts every defective image under NAME.
Everything is checked before anything is written; a bad input (missing image, unreadable JSON,
two images with the same name in one folder) stops with one line naming the file, exit code 2.
The output folder must be empty (or ``--force``); the input is never modified. Make the
train/good images with ``tools/split_good.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from _common import (IMAGE_EXTENSIONS, PLACE_MODES, ToolError, check_unique_stems, list_images, place,
                     prepare_output, run_tool)
from padim.io import ImageReadError, image_size

PROG = "convert_to_mvtec.py"
COMBINED = "combined"
LABELME_LINE_WIDTH = 10  # labelme's own defaults for rasterising lines and points
LABELME_POINT_RADIUS = 5


@dataclass
class Entry:
    """One image to write: its defect type (None: good) and, for a defect, how to draw its mask."""

    source: Path
    defect: str | None = None
    mask: Callable[[], np.ndarray] | None = None


# ----------------------------------------------------------------------------- shared checks

def defect_folder_name(label: str, where: str) -> str:
    """A label as a folder name: runs of characters other than letters, digits, '-', '_', '.' → '_'."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(label)).strip("._")
    if not name:
        raise ToolError(f"{where}: label {label!r} gives an empty folder name; pass --defect-type NAME")
    if name.lower() == "good":
        raise ToolError(f"{where}: label {label!r} would clash with test/good; pass --defect-type NAME")
    return name


def defect_type(labels: list[str], override: str | None, where: str) -> str:
    if override:
        return override
    names = sorted({defect_folder_name(label, where) for label in labels})
    return names[0] if len(names) == 1 else COMBINED


def checked_size(path: Path) -> tuple[int, int]:
    """(height, width) as padim reads the image (EXIF rotation applied); a clear error if unreadable."""
    try:
        return image_size(path)
    except ImageReadError as exc:
        raise ToolError(str(exc)) from None


def load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ToolError(f"'{path}': not valid JSON ({exc})") from None


def _points(raw, where: str) -> list[tuple[float, float]]:
    try:
        points = [(float(x), float(y)) for x, y in raw]
    except (TypeError, ValueError):
        raise ToolError(f"{where}: points must be a list of [x, y] pairs") from None
    if not all(math.isfinite(v) for p in points for v in p):
        raise ToolError(f"{where}: points must be finite numbers")
    return points


def _draw(size_hw: tuple[int, int], shapes: list[tuple[str, list]]) -> np.ndarray:
    """Rasterise shapes (labelme semantics, PIL ImageDraw, outline included) into a bool mask."""
    h, w = size_hw
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for kind, pts in shapes:
        if kind == "polygon":
            draw.polygon(pts, outline=255, fill=255)
        elif kind == "rectangle":
            (x0, y0), (x1, y1) = pts
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=255, fill=255)
        elif kind == "circle":
            (cx, cy), (px, py) = pts
            r = math.hypot(px - cx, py - cy)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, fill=255)
        elif kind in ("line", "linestrip"):
            draw.line(pts, fill=255, width=LABELME_LINE_WIDTH)
        elif kind == "point":
            (cx, cy), r = pts[0], LABELME_POINT_RADIUS
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, fill=255)
    return np.asarray(canvas) > 0


# ----------------------------------------------------------------------------- folder

def _find_mask(masks: Path, stem: str, image: Path) -> Path:
    candidates = [masks / f"{name}{ext}" for name in (stem, f"{stem}_mask")
                  for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)]
    found = sorted({p for p in candidates if p.is_file()})
    if not found:
        raise ToolError(f"'{image}': no mask {stem}.png or {stem}_mask.png (or other image type) in '{masks}'")
    if len(found) > 1:
        raise ToolError(f"'{image}': several masks match in '{masks}': {', '.join(p.name for p in found)}")
    return found[0]


def _mask_from_file(path: Path, size_hw: tuple[int, int]) -> Callable[[], np.ndarray]:
    mask_hw = checked_size(path)
    if mask_hw != size_hw:
        raise ToolError(f"'{path}': mask is {mask_hw[1]}×{mask_hw[0]} px but its image is {size_hw[1]}×{size_hw[0]}")

    def read() -> np.ndarray:
        with Image.open(path) as image:
            array = np.asarray(image)
        return (array.max(axis=2) if array.ndim == 3 else array) > 0
    return read


def _ng_folder(text: str) -> tuple[str | None, Path]:
    """'TYPE=DIR' or 'DIR' (an existing folder whose name contains '=' is taken as DIR)."""
    if "=" in text and not Path(text).is_dir():
        name, folder = text.split("=", 1)
        return name, Path(folder)
    return None, Path(text)


def plan_folder(args) -> tuple[list[Entry], list[Path]]:
    if args.ok is None and not args.ng:
        raise ToolError("give --ok DIR and/or --ng [TYPE=]DIR")
    entries: list[Entry] = []
    inputs = [p for p in [args.ok, args.masks] if p is not None]
    if args.ok is not None:
        entries += [Entry(p) for p in list_images(args.ok)]
    mask_stems: dict[str, Path] = {}
    for text in args.ng:
        name, folder = _ng_folder(text)
        inputs.append(folder)
        kind = defect_folder_name(name, f"--ng {text}") if name else (args.defect_type or "defect")
        for image in list_images(folder):
            mask = None
            if args.masks is not None:
                if image.stem in mask_stems:
                    raise ToolError(f"'{image}': same name as '{mask_stems[image.stem]}', so both would take "
                                    f"the same mask from '{args.masks}'")
                mask_stems[image.stem] = image
                mask = _mask_from_file(_find_mask(args.masks, image.stem, image), checked_size(image))
            entries.append(Entry(image, kind, mask))
    return entries, inputs


# ----------------------------------------------------------------------------- labelme

LABELME_POINTS = {"polygon": (3, None), "rectangle": (2, 2), "circle": (2, 2), "line": (2, 2),
                  "linestrip": (2, None), "point": (1, 1)}


def _labelme_shapes(doc, where: str) -> tuple[list[str], list[tuple[str, list]]]:
    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise ToolError(f"{where}: no 'shapes' list (is this a labelme file?)")
    labels, drawn = [], []
    for i, shape in enumerate(shapes):
        at = f"{where}: shape {i}"
        if not isinstance(shape, dict):
            raise ToolError(f"{at}: expected an object")
        kind = shape.get("shape_type") or "polygon"
        if kind not in LABELME_POINTS:
            raise ToolError(f"{at}: shape_type {kind!r} is not supported "
                            f"(supported: {', '.join(LABELME_POINTS)})")
        pts = _points(shape.get("points", []), at)
        low, high = LABELME_POINTS[kind]
        if len(pts) < low or (high is not None and len(pts) != high):
            raise ToolError(f"{at}: a {kind} needs {low if high is None else high}"
                            f"{' or more' if high is None else ''} points, got {len(pts)}")
        labels.append(str(shape.get("label", "")))
        drawn.append((kind, pts))
    return labels, drawn


def plan_labelme(args) -> tuple[list[Entry], list[Path]]:
    root = args.input
    if not root.is_dir():
        raise ToolError(f"'{root}': no such folder")
    annotated: dict[Path, tuple[Path, list[str], list]] = {}
    for json_path in sorted(root.rglob("*.json"), key=lambda p: p.relative_to(root).as_posix()):
        if any(part.startswith(".") for part in json_path.relative_to(root).parts):
            continue
        where = f"'{json_path}'"
        doc = load_json(json_path)
        if not isinstance(doc, dict) or not isinstance(doc.get("imagePath"), str):
            raise ToolError(f"{where}: no 'imagePath' (is this a labelme file?)")
        image = (json_path.parent / doc["imagePath"].replace("\\", "/")).resolve()
        if not image.is_file():
            raise ToolError(f"{where}: image '{doc['imagePath']}' not found (looked for '{image}')")
        if image in annotated:
            raise ToolError(f"{where}: annotates the same image as '{annotated[image][0]}'")
        labels, shapes = _labelme_shapes(doc, where)
        h, w = checked_size(image)
        stated = (doc.get("imageHeight"), doc.get("imageWidth"))
        if None not in stated and tuple(stated) != (h, w):
            raise ToolError(f"{where}: says {stated[1]}×{stated[0]} px but '{image}' is {w}×{h}")
        annotated[image] = (json_path, labels, shapes)
    entries = []
    for image in list_images(root):
        json_path, labels, shapes = annotated.pop(image.resolve(), (None, [], []))
        if not shapes:
            entries.append(Entry(image))
            continue
        size = checked_size(image)
        entries.append(Entry(image, defect_type(labels, args.defect_type, f"'{json_path}'"),
                             lambda size=size, shapes=shapes: _draw(size, shapes)))
    for image, (json_path, labels, shapes) in annotated.items():  # images outside ROOT
        entry = Entry(image)
        if shapes:
            size = checked_size(image)
            entry = Entry(image, defect_type(labels, args.defect_type, f"'{json_path}'"),
                          lambda size=size, shapes=shapes: _draw(size, shapes))
        entries.append(entry)
    return entries, [root]


# ----------------------------------------------------------------------------- COCO

def decode_rle_string(counts: str) -> list[int]:
    """COCO's compressed RLE string (pycocotools rleFrString) → run lengths."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("truncated RLE string")
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def rle_to_mask(runs: list[int], size_hw: tuple[int, int]) -> np.ndarray:
    """Run lengths (zeros first, column-major as in COCO) → bool mask."""
    h, w = size_hw
    runs_arr = np.asarray(runs, dtype=np.int64)
    values = np.arange(len(runs_arr)) % 2 == 1
    flat = np.repeat(values, runs_arr)
    return flat.reshape((w, h)).T


def _coco_geometry(segmentation, size_hw: tuple[int, int], where: str):
    """Validated geometry of one annotation: ('polygon', points) items or an RLE run list."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise ToolError(f"{where}: empty segmentation")
        polygons = []
        for poly in segmentation:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise ToolError(f"{where}: a polygon must be a flat list [x1, y1, x2, y2, ...] of 3 or more points")
            polygons.append(("polygon", _points(zip(poly[0::2], poly[1::2]), where)))
        return polygons
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size")
        if not isinstance(size, list) or [int(v) for v in size] != list(size_hw):
            raise ToolError(f"{where}: RLE size {size} differs from the image's [height, width] {list(size_hw)}")
        counts = segmentation["counts"]
        try:
            runs = decode_rle_string(counts) if isinstance(counts, str) else [int(v) for v in counts]
        except (TypeError, ValueError) as exc:
            raise ToolError(f"{where}: unreadable RLE counts ({exc})") from None
        if any(r < 0 for r in runs) or sum(runs) != size_hw[0] * size_hw[1]:
            raise ToolError(f"{where}: RLE runs sum to {sum(runs)}, expected height × width = "
                            f"{size_hw[0] * size_hw[1]}")
        return runs
    raise ToolError(f"{where}: segmentation must be polygons or an RLE object with 'counts' and 'size'")


def _coco_mask(size_hw, geometries) -> np.ndarray:
    polygons = [g for geom in geometries if isinstance(geom[0], tuple) for g in geom]
    mask = _draw(size_hw, polygons)
    for geom in geometries:
        if not isinstance(geom[0], tuple):
            mask |= rle_to_mask(geom, size_hw)
    return mask


def plan_coco(args) -> tuple[list[Entry], list[Path]]:
    doc = load_json(args.input)
    where = f"'{args.input}'"
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations")):
        raise ToolError(f"{where}: expected 'images' and 'annotations' lists (is this a COCO file?)")
    images_dir = args.images if args.images is not None else args.input.parent
    categories = {c.get("id"): str(c.get("name", c.get("id"))) for c in doc.get("categories", [])
                  if isinstance(c, dict)}
    images: dict = {}
    for record in doc["images"]:
        if not isinstance(record, dict) or "id" not in record or not isinstance(record.get("file_name"), str):
            raise ToolError(f"{where}: every image needs an 'id' and a 'file_name'")
        if record["id"] in images:
            raise ToolError(f"{where}: image id {record['id']} appears twice")
        path = images_dir / record["file_name"]
        if not path.is_file():
            raise ToolError(f"{where}: image '{record['file_name']}' not found (looked for '{path}')")
        h, w = checked_size(path)
        stated = (record.get("height"), record.get("width"))
        if None not in stated and tuple(stated) != (h, w):
            raise ToolError(f"{where}: image id {record['id']} says {stated[1]}×{stated[0]} px but "
                            f"'{path}' is {w}×{h}")
        images[record["id"]] = (path, (h, w), [], [])
    for i, ann in enumerate(doc["annotations"]):
        at = f"{where}: annotation {ann.get('id', i) if isinstance(ann, dict) else i}"
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise ToolError(f"{at}: unknown image_id")
        if ann.get("category_id") not in categories:
            raise ToolError(f"{at}: unknown category_id {ann.get('category_id')!r}")
        path, size, labels, geometries = images[ann["image_id"]]
        geometries.append(_coco_geometry(ann.get("segmentation"), size, at))
        labels.append(categories[ann["category_id"]])
    entries = []
    for path, size, labels, geometries in images.values():
        if not geometries:
            entries.append(Entry(path))
        else:
            entries.append(Entry(path, defect_type(labels, args.defect_type, where),
                                 lambda size=size, g=geometries: _coco_mask(size, g)))
    return entries, [args.input.parent if args.images is None else images_dir]


# ----------------------------------------------------------------------------- writing

def write(entries: list[Entry], inputs: list[Path], args) -> dict[str, int]:
    out = args.output
    targets = [(e, out / "test" / (e.defect or "good") / e.source.name) for e in entries]
    check_unique_stems([(e.source, dest) for e, dest in targets])
    resolved = prepare_output(out, inputs, args.force)
    counts: dict[str, int] = {}
    for entry, dest in targets:
        place(entry.source, dest, args.mode)
        if entry.mask is not None:
            mask_path = resolved / "ground_truth" / entry.defect / f"{entry.source.stem}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.where(entry.mask(), 255, 0).astype(np.uint8)).save(mask_path)
        counts[entry.defect or "good"] = counts.get(entry.defect or "good", 0) + 1
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="layout", metavar="LAYOUT", required=True)

    def add(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("-o", "--output", type=Path, required=True, help="MVTec AD root to write (must be empty)")
        q.add_argument("--defect-type", default=None, help="one defect folder name for every defective image")
        q.add_argument("--mode", choices=PLACE_MODES, default="copy", help="how images are placed (default copy)")
        q.add_argument("--force", action="store_true", help="write into a non-empty OUTPUT (same names are replaced)")
        return q

    q = add("folder", "OK/NG folders of images, with an optional folder of masks.",
            f"python tools/{PROG} folder --ok src/OK --ng src/NG --masks src/masks -o data/mvtec")
    q.add_argument("--ok", type=Path, default=None, help="folder of good images")
    q.add_argument("--ng", action="append", default=[], metavar="[TYPE=]DIR",
                   help="folder of defective images, optionally with its defect type (repeatable; "
                        "default type: --defect-type or 'defect')")
    q.add_argument("--masks", type=Path, default=None,
                   help="folder of masks <stem>.png or <stem>_mask.png (non-zero = defect); every NG image needs one")
    q = add("labelme", "A folder of labelme JSON files and their images.",
            f"python tools/{PROG} labelme src/labelme -o data/mvtec")
    q.add_argument("input", type=Path, help="folder searched recursively for *.json and images")
    q = add("coco", "A COCO instance-segmentation JSON file.",
            f"python tools/{PROG} coco src/annotations.json --images src/images -o data/mvtec")
    q.add_argument("input", type=Path, help="the COCO JSON file")
    q.add_argument("--images", type=Path, default=None, help="folder the file_name entries are relative to "
                                                             "(default: the JSON file's folder)")
    return p


PLANNERS = {"folder": plan_folder, "labelme": plan_labelme, "coco": plan_coco}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.defect_type is not None:
        args.defect_type = defect_folder_name(args.defect_type, "--defect-type")
    entries, inputs = PLANNERS[args.layout](args)
    if not entries:
        raise ToolError("no images found in the input")
    counts = write(entries, inputs, args)
    print(", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + f" → {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(PROG, main))
