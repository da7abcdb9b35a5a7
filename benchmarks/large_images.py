"""Huge images end to end: ``padim fit`` and ``padim score`` with default options on synthetic
3872×3200 photos with 20–80 px defects; wall time per image, peak memory, detection.

The dataset comes from ``datasets/synthetic_large.py`` (made if ``--root`` does not exist yet).
Each command runs as a subprocess under ``/usr/bin/time -v`` so its peak RSS is its own.

    python benchmarks/large_images.py --root /tmp/large --threads 2
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> dict:
    started = time.time()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    seconds = time.time() - started
    if out.returncode not in (0, 1):
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak_kb / 2**20, 2), "stdout": out.stdout.strip(),
            "plan": next((line for line in out.stderr.splitlines() if line.startswith("memory plan")), "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/padim_large"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/padim_large_run"))
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fit-args", default="", help="extra options for padim fit, e.g. '--scale 1'")
    args = parser.parse_args()
    if not args.root.exists():
        subprocess.run([sys.executable, str(REPO / "datasets" / "synthetic_large.py"), str(args.root),
                        "--n-train", str(args.n_train), "--n-test-good", "10", "--n-test-defect", "5", "--quiet"],
                       check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    padim = [sys.executable, "-m", "padim"]
    runtime = ["--threads", str(args.threads), "--device", args.device, "--quiet"]
    model = args.work / "model.padim"
    n_train = len(list((args.root / "train" / "good").iterdir()))
    fit = timed([*padim, "fit", str(args.root / "train" / "good"), "-o", str(model), *runtime, *args.fit_args.split()])
    test = args.root / "test"
    n_test = sum(1 for _ in test.rglob("*.jpg")) + sum(1 for _ in test.rglob("*.png"))
    score = timed([*padim, "score", str(model), str(test), "-o", str(args.work / "scores.tsv"),
                   "--save-maps", str(args.work / "maps"), *runtime])
    with open(args.work / "scores.tsv", newline="", encoding="utf-8") as handle:  # csv-quoted TSV
        scores = {row["path"]: float(row["score"]) for row in csv.DictReader(handle, delimiter="\t")}
    good = [s for p, s in scores.items() if p.startswith("good/")]
    report = {"train_images": n_train, "test_images": n_test,
              "fit_s_per_image": round(fit["seconds"] / n_train, 2), "fit_peak_rss_gb": fit["peak_rss_gb"],
              "score_s_per_image": round(score["seconds"] / n_test, 2), "score_peak_rss_gb": score["peak_rss_gb"],
              "plan": fit["plan"], "per_type": {}}
    for defect in sorted({p.split("/")[0] for p in scores} - {"good"}):
        above, on_defect = [], []
        for path, value in scores.items():
            if not path.startswith(defect + "/"):
                continue
            above.append(value > max(good))
            amap = np.load(args.work / "maps" / Path(path).with_suffix(".npy"))
            mask = cv2.imread(str(args.root / "ground_truth" / defect / f"{Path(path).stem}_mask.png"), 0) > 0
            mask = cv2.dilate(mask.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0  # peak within 20 px
            y, x = np.unravel_index(np.argmax(amap), amap.shape)
            on_defect.append(bool(mask[y, x]))
        report["per_type"][defect] = {"above_every_good": f"{sum(above)}/{len(above)}",
                                      "map_peak_on_defect": f"{sum(on_defect)}/{len(on_defect)}"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
