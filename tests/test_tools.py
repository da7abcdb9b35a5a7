"""tools/convert_to_mvtec.py and tools/split_good.py, run as subprocesses on small hand-made inputs.

Masks are checked against expectations computed here independently (exact pixel sets of
rectangles, half-plane tests for a triangle, RLE runs encoded here from a known mask), and the
converted folders are read back with padim's own reader, ``padim.mvtec.read_labelled_set``."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from padim.mvtec import read_labelled_set

REPO = Path(__file__).resolve().parent.parent
CONVERT = REPO / "tools" / "convert_to_mvtec.py"
SPLIT = REPO / "tools" / "split_good.py"


def run(script: Path, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def write_image(path: Path, h: int, w: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def read_mask(path: Path) -> np.ndarray:
    array = np.asarray(Image.open(path))
    assert set(np.unique(array)) <= {0, 255}
    return array == 255


def tree_digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def rectangle(h, w, x0, y0, x1, y1) -> np.ndarray:
    expected = np.zeros((h, w), dtype=bool)
    expected[y0:y1 + 1, x0:x1 + 1] = True  # corners inclusive, as labelme/PIL draw them
    return expected


def one_error_line(rc, err, *needles):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------------------- --help

@pytest.mark.parametrize("args", [(CONVERT,), (CONVERT, "folder"), (CONVERT, "labelme"), (CONVERT, "coco"),
                                  (SPLIT,)])
def test_help(args):
    rc, out, err = run(*args, "--help")
    assert rc == 0 and err == ""
    assert out.startswith("usage:") and ("--output" in out or "LAYOUT" in out)


# ----------------------------------------------------------------------------- labelme

H, W = 60, 80


def labelme_doc(image_name, shapes):
    return {"version": "5.4.1", "flags": {}, "imagePath": image_name, "imageData": None,
            "imageHeight": H, "imageWidth": W,
            "shapes": [{"label": label, "points": pts, "group_id": None, "shape_type": kind, "flags": {}}
                       for label, kind, pts in shapes]}


@pytest.fixture
def labelme_dir(tmp_path):
    src = tmp_path / "labelme"
    for i, name in enumerate(["rect.png", "tri.png", "both.png", "plain.png", "empty.png"]):
        write_image(src / name, H, W, seed=i)
    docs = {
        # corners given bottom-right first: the rectangle must still be the same pixel set
        "rect": [("scratch", "rectangle", [[30, 40], [10, 20]])],
        "tri": [("dent", "polygon", [[10, 10], [50, 10], [10, 50]])],
        "both": [("scratch", "rectangle", [[0, 0], [4, 4]]), ("dent", "rectangle", [[70, 50], [79, 59]])],
        "empty": [],
    }
    for stem, shapes in docs.items():
        (src / f"{stem}.json").write_text(json.dumps(labelme_doc(f"{stem}.png", shapes)))
    return src


def test_labelme_masks_match_the_shapes(labelme_dir, tmp_path):
    out = tmp_path / "mvtec"
    rc, stdout, err = run(CONVERT, "labelme", labelme_dir, "-o", out)
    assert rc == 0, err

    assert (read_mask(out / "ground_truth/scratch/rect_mask.png") == rectangle(H, W, 10, 20, 30, 40)).all()

    tri = read_mask(out / "ground_truth/dent/tri_mask.png")
    y, x = np.mgrid[0:H, 0:W]
    # signed distances to the edges x = 10, y = 10 and x + y = 60 (positive inside)
    dist = np.stack([x - 10, y - 10, (60 - x - y) / np.sqrt(2)])
    inside, outside = dist.min(axis=0) > 1, dist.min(axis=0) < -1
    assert tri[inside].all() and not tri[outside].any()
    assert abs(int(tri.sum()) - 41 * 41 / 2) < 2 * 41 * 1.5  # area of the triangle, ± a boundary strip

    both = read_mask(out / "ground_truth/combined/both_mask.png")  # two labels → 'combined'
    assert (both == (rectangle(H, W, 0, 0, 4, 4) | rectangle(H, W, 70, 50, 79, 59))).all()

    data = read_labelled_set(out)
    got = {(p.name, label, kind, m.name if m else None)
           for p, label, kind, m in zip(data.paths, data.labels, data.defect_types, data.mask_paths)}
    assert got == {("rect.png", 1, "scratch", "rect_mask.png"), ("tri.png", 1, "dent", "tri_mask.png"),
                   ("both.png", 1, "combined", "both_mask.png"), ("plain.png", 0, "good", None),
                   ("empty.png", 0, "good", None)}
    assert (out / "test/good/plain.png").read_bytes() == (labelme_dir / "plain.png").read_bytes()
    assert "JSON" not in stdout and "→" in stdout


def test_labelme_defect_type_override_and_symlinks(labelme_dir, tmp_path):
    out = tmp_path / "mvtec"
    rc, _, err = run(CONVERT, "labelme", labelme_dir, "-o", out, "--defect-type", "ng", "--mode", "symlink")
    assert rc == 0, err
    assert sorted(p.name for p in (out / "test/ng").iterdir()) == ["both.png", "rect.png", "tri.png"]
    link = out / "test/ng/rect.png"
    assert link.is_symlink() and link.resolve() == (labelme_dir / "rect.png").resolve()


def test_labelme_missing_image_is_one_line_and_writes_nothing(labelme_dir, tmp_path):
    (labelme_dir / "ghost.json").write_text(json.dumps(labelme_doc("ghost.png", [("x", "polygon", [[0, 0], [5, 0], [0, 5]])])))
    out = tmp_path / "mvtec"
    rc, _, err = run(CONVERT, "labelme", labelme_dir, "-o", out)
    one_error_line(rc, err, "ghost.json", "ghost.png")
    assert not out.exists()


def test_labelme_unreadable_json(labelme_dir, tmp_path):
    (labelme_dir / "broken.json").write_text('{"shapes": [')
    rc, _, err = run(CONVERT, "labelme", labelme_dir, "-o", tmp_path / "mvtec")
    one_error_line(rc, err, "broken.json", "not valid JSON")


def test_labelme_unsupported_shape(labelme_dir, tmp_path):
    (labelme_dir / "rect.json").write_text(json.dumps(labelme_doc("rect.png", [("x", "cuboid", [[0, 0]])])))
    rc, _, err = run(CONVERT, "labelme", labelme_dir, "-o", tmp_path / "mvtec")
    one_error_line(rc, err, "rect.json", "cuboid")


# ----------------------------------------------------------------------------- COCO

CH, CW = 30, 40


def rle_runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a mask in COCO's column-major order, zeros first (written here from the spec)."""
    flat = mask.T.ravel().astype(np.int8)
    runs, current, length = [], 0, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            runs.append(length)
            current, length = v, 1
    runs.append(length)
    return runs


def rle_string(runs: list[int]) -> str:
    """pycocotools' rleToString, ported from its C source."""
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_rle_string_port_round_trips_a_known_value():
    # Hand-decoded: runs [5, 3] → '5' (5 + 48 = 53) and '3'; the delta rule starts at the fourth run.
    assert rle_string([5, 3]) == "53"
    assert rle_string([1, 2, 3, 10]) == chr(49) + chr(50) + chr(51) + chr(8 + 48)


@pytest.fixture
def coco_case(tmp_path):
    images = tmp_path / "images"
    rng = np.random.default_rng(7)
    blob = rng.random((CH, CW)) < 0.3  # an irregular mask, many runs
    blob2 = np.zeros((CH, CW), dtype=bool)
    blob2[3:25, 30:38] = True
    blob2[0, 0] = True  # a one-pixel run at the very start
    for i, name in enumerate(["poly.png", "rle.png", "crle.png", "ok.png"]):
        write_image(images / name, CH, CW, seed=10 + i)
    doc = {
        "images": [{"id": i + 1, "file_name": name, "height": CH, "width": CW}
                   for i, name in enumerate(["poly.png", "rle.png", "crle.png", "ok.png"])],
        "categories": [{"id": 1, "name": "crack"}, {"id": 2, "name": "stain mark"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[5, 5, 20, 5, 20, 15, 5, 15]]},
            {"id": 2, "image_id": 2, "category_id": 2, "iscrowd": 1,
             "segmentation": {"size": [CH, CW], "counts": rle_runs(blob)}},
            {"id": 3, "image_id": 3, "category_id": 2, "iscrowd": 1,
             "segmentation": {"size": [CH, CW], "counts": rle_string(rle_runs(blob2))}},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    return path, images, blob, blob2, doc


def test_coco_polygon_and_rle_masks(coco_case, tmp_path):
    path, images, blob, blob2, _ = coco_case
    out = tmp_path / "mvtec"
    rc, _, err = run(CONVERT, "coco", path, "--images", images, "-o", out)
    assert rc == 0, err
    assert (read_mask(out / "ground_truth/crack/poly_mask.png") == rectangle(CH, CW, 5, 5, 20, 15)).all()
    assert (read_mask(out / "ground_truth/stain_mark/rle_mask.png") == blob).all()  # 'stain mark' → stain_mark
    assert (read_mask(out / "ground_truth/stain_mark/crle_mask.png") == blob2).all()
    data = read_labelled_set(out)
    assert sorted(zip([p.name for p in data.paths], data.labels, data.defect_types)) == [
        ("crle.png", 1, "stain_mark"), ("ok.png", 0, "good"), ("poly.png", 1, "crack"), ("rle.png", 1, "stain_mark")]
    assert all((m is None) == (y == 0) for m, y in zip(data.mask_paths, data.labels))


def test_coco_bad_rle_and_missing_image(coco_case, tmp_path):
    path, images, _, _, doc = coco_case
    doc["annotations"][1]["segmentation"]["counts"] = [5, 5]  # does not cover the image
    path.write_text(json.dumps(doc))
    rc, _, err = run(CONVERT, "coco", path, "--images", images, "-o", tmp_path / "a")
    one_error_line(rc, err, "instances.json", "annotation 2", "RLE")
    (images / "ok.png").unlink()
    rc, _, err = run(CONVERT, "coco", path, "--images", images, "-o", tmp_path / "b")
    one_error_line(rc, err, "ok.png", "not found")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- OK/NG folders

def test_folder_layout_with_masks(tmp_path):
    src = tmp_path / "src"
    for i, name in enumerate(["g1.png", "g2.jpg"]):
        write_image(src / "OK" / name, 20, 24, seed=i)
    write_image(src / "NG" / "a.png", 20, 24, seed=5)
    write_image(src / "NG" / "b.png", 20, 24, seed=6)
    mask_a = np.zeros((20, 24), np.uint8)
    mask_a[2:9, 3:7] = 1  # 0/1 masks are accepted and written as 0/255
    mask_b = np.zeros((20, 24), np.uint8)
    mask_b[10:, 20:] = 200
    (src / "masks").mkdir()
    Image.fromarray(mask_a).save(src / "masks" / "a.png")
    Image.fromarray(mask_b).save(src / "masks" / "b_mask.png")
    before = tree_digest(src)
    out = tmp_path / "mvtec"
    rc, _, err = run(CONVERT, "folder", "--ok", src / "OK", "--ng", f"chip={src / 'NG'}", "--masks", src / "masks",
                     "-o", out)
    assert rc == 0, err
    assert (read_mask(out / "ground_truth/chip/a_mask.png") == (mask_a > 0)).all()
    assert (read_mask(out / "ground_truth/chip/b_mask.png") == (mask_b > 0)).all()
    data = read_labelled_set(out)
    assert sorted((p.name, y) for p, y in zip(data.paths, data.labels)) == [
        ("a.png", 1), ("b.png", 1), ("g1.png", 0), ("g2.jpg", 0)]
    assert tree_digest(src) == before  # the input is untouched


def test_folder_missing_mask_and_name_clash(tmp_path):
    src = tmp_path / "src"
    write_image(src / "NG" / "x" / "a.png", 16, 16, seed=1)
    write_image(src / "NG" / "y" / "a.jpg", 16, 16, seed=2)
    rc, _, err = run(CONVERT, "folder", "--ng", src / "NG", "-o", tmp_path / "o1")
    one_error_line(rc, err, "a.", "name clash")
    (src / "masks").mkdir()
    rc, _, err = run(CONVERT, "folder", "--ng", src / "NG" / "x", "--masks", src / "masks", "-o", tmp_path / "o2")
    one_error_line(rc, err, "a.png", "no mask")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_non_empty_output_is_refused_unless_forced(labelme_dir, tmp_path):
    out = tmp_path / "mvtec"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, _, err = run(CONVERT, "labelme", labelme_dir, "-o", out)
    one_error_line(rc, err, "not empty", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    rc, _, err = run(CONVERT, "labelme", labelme_dir, "-o", out, "--force")
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "keep me" and (out / "test/good/plain.png").is_file()


def test_output_inside_the_input_is_refused(labelme_dir):
    rc, _, err = run(CONVERT, "labelme", labelme_dir, "-o", labelme_dir / "out")
    one_error_line(rc, err, "outside the input")


# ----------------------------------------------------------------------------- split_good

@pytest.fixture
def good_dir(tmp_path):
    src = tmp_path / "good"
    for i in range(20):
        write_image(src / ("sub" if i % 3 == 0 else ".") / f"img_{i:02d}.png", 8, 8, seed=100 + i)
    (src / "readme.txt").write_text("not an image")
    return src


def split_sets(out: Path, train="train/good", val="val/good"):
    return ({p.name for p in (out / train).iterdir()}, {p.name for p in (out / val).iterdir()})


def test_split_is_a_reproducible_partition(good_dir, tmp_path):
    before = tree_digest(good_dir)
    names = {f"img_{i:02d}.png" for i in range(20)}
    rc, _, err = run(SPLIT, good_dir, "-o", tmp_path / "a", "--val-fraction", "0.25", "--seed", "3")
    assert rc == 0, err
    train, val = split_sets(tmp_path / "a")
    assert len(val) == 5 and len(train) == 15 and train | val == names and not train & val
    for name in train:
        src = next(good_dir.rglob(name))
        assert (tmp_path / "a/train/good" / name).read_bytes() == src.read_bytes()

    rc, _, _ = run(SPLIT, good_dir, "-o", tmp_path / "b", "--val-fraction", "0.25", "--seed", "3", cwd=tmp_path)
    assert rc == 0 and split_sets(tmp_path / "b") == (train, val)
    rc, _, _ = run(SPLIT, good_dir, "-o", tmp_path / "c", "--val-fraction", "0.25", "--seed", "4")
    assert rc == 0 and split_sets(tmp_path / "c")[1] != val  # 1 in C(20, 5) = 15504 chance to coincide
    assert tree_digest(good_dir) == before

    with open(tmp_path / "a/split.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert {Path(r["source"]).name for r in rows if r["subset"] == "val"} == val
    assert {Path(r["source"]).name for r in rows if r["subset"] == "train"} == train
    assert all((tmp_path / "a" / r["output"]).is_file() for r in rows)


def test_split_symlinks_into_a_test_folder(good_dir, tmp_path):
    out = tmp_path / "s"
    rc, _, err = run(SPLIT, good_dir, "-o", out, "--val-fraction", "0.1", "--mode", "symlink",
                     "--val-subdir", "test/good")
    assert rc == 0, err
    train, val = split_sets(out, val="test/good")
    assert len(val) == 2 and len(train) == 18
    for link in (out / "test/good").iterdir():
        assert link.is_symlink() and link.resolve() == next(good_dir.rglob(link.name)).resolve()


@pytest.mark.parametrize("args, needle", [(("--val-fraction", "1"), "--val-fraction"),
                                         (("--val-subdir", "../x"), "--val-subdir")])
def test_split_bad_options(good_dir, tmp_path, args, needle):
    rc, _, err = run(SPLIT, good_dir, "-o", tmp_path / "o", *args)
    one_error_line(rc, err, needle)
    assert not (tmp_path / "o").exists()
