"""Which synthetic defect families rank candidates as the real defects do?

    python benchmarks/family_agreement.py ../shared/data/cookies default,deep,shallow,shared,1.25x \\
        --families paste,perlin,scratch,blob,blur,hole,crack --random-r18 /tmp/r18_random.pth

Each candidate (auto-configuration's, by name; ``r18-random`` with ``--random-r18``: a ResNet18
with seeded random weights, d 100, RESULTS.md §32) is fitted on the training images without
calibration. The test set's good images are scored, then its real defects and synthetic defects
made from those same good images (autoconfig.synthetic_validation, both scales, ``--seeds``
seeds). Per family and for the real defects: image AUROC against the good images, pixel AUROC and
PRO with the good images' maps (maps and masks compared at the default input's pixel count, as the
selection does). Images are read as the selection reads them (8-bit, at most 512 px), so the real
figures are not ``padim eval``'s full-resolution ones; the ranking is what is compared.

Then, over the candidates: the Spearman rank correlation of each family's mean metric (the mean of
its image AUROC, pixel AUROC and PRO) with the real mean, and of the mean over a set of families
(each ``--compare`` set) with it — whether adding a family would make the signal agree better.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import spearmanr

from auto_extra_candidate import write_random_resnet18
from family_auroc import dataset_split
from padim import PaDiM
from padim.validation import DEFECT_SCALES, comparison_size, defect_metrics, shrink_mask, synthetic_validation
from padim.synthetic import FAMILIES

COMPARE_PIXELS = 256 * 256  # the default candidate's input, where the selection meets maps with masks


def metrics(good_scores, good_maps, scores, maps, masks) -> tuple[float, float, float]:
    """Image AUROC, pixel AUROC and PRO of defects against the good images (padim.validation's),
    maps and masks compared at COMPARE_PIXELS."""
    def small(a):
        size = comparison_size(a.shape, COMPARE_PIXELS)
        return cv2.resize(a.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)

    masks = [shrink_mask(mask, comparison_size(mask.shape, COMPARE_PIXELS)) for mask in masks]
    return defect_metrics(good_scores, [small(m) for m in good_maps], scores, [small(m) for m in maps], masks)


def weaken(strength: float) -> None:
    """Make padim.synthetic's defects subtler: ``image + strength · (defect − image)``, the mask
    kept exact (synthetic_validation recomputes it after rounding to 8 bits)."""
    import padim.synthetic as synthetic

    made = synthetic.make_defect

    def subtler(image, family, rng, donor=None, scale=1.0):
        defect, _ = made(image, family, rng, donor, scale)
        blended = (image + strength * (defect - image)).astype(np.float32)
        return blended, (blended != image).any(axis=-1)

    synthetic.make_defect = subtler


def real_masks(root: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """The real defects' masks at the size they were read, in dataset_split's order."""
    from padim.mvtec import find_mask, load_mask

    paths = [p for kind in sorted((root / "test").iterdir()) if kind.name != "good" for p in sorted(kind.iterdir())]
    return [load_mask(find_mask(root, path.parent.name, path.stem), image.shape[:2])
            for path, image in zip(paths, images)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a dataset in MVTec AD layout")
    parser.add_argument("names", help="comma-separated candidate names (padim.autoconfig.candidates, r18-random)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--compare", action="append", default=None,
                        help="comma-separated families whose mean is correlated with the real mean (repeatable; "
                             "default: padim's FAMILIES, and those with --families)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--max-train", type=int, default=None, help="fit on the first N training images")
    parser.add_argument("--max-good", type=int, default=None, help="score the first N test good images")
    parser.add_argument("--random-r18", type=Path, default=None, help="weights file written for r18-random")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="blend each synthetic defect into its image by this factor (subtler defects below 1)")
    args = parser.parse_args()
    if args.strength != 1.0:
        weaken(args.strength)
    options, train, good, real = dataset_split(args.root)
    train, good = train[:args.max_train], good[:args.max_good]
    masks = real_masks(args.root, real)
    if args.random_r18 is not None:
        write_random_resnet18(args.random_r18)
        options["r18-random"] = {"backbone": "resnet18", "d": 100, "weights": str(args.random_r18)}
    families = args.families.split(",")
    synthetic: dict[str, tuple[list, list]] = {f: ([], []) for f in families}  # family → images, masks
    for seed in range(args.seeds):
        for defects in synthetic_validation(good, seed, DEFECT_SCALES, families=families):
            for image, mask, family in zip(defects.images, defects.masks, defects.families):
                synthetic[family][0].append(image)
                synthetic[family][1].append(mask)
    columns = ["real"] + families
    table: dict[str, dict[str, tuple]] = {}
    print(f"{len(train)} training, {len(good)} good, {len(real)} real defects; "
          + ", ".join(f"{f} {len(synthetic[f][0])}" for f in families), flush=True)
    print("| candidate | " + " | ".join(f"{c} img / px / PRO" for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in args.names.split(","):
        model = PaDiM(progress=False, config="fixed", **options[name]).fit(train, calibrate=False)

        def outputs(images):
            results = list(model.iter_results(images, maps=True))
            return np.array([r.score for r in results]), [r.anomaly_map for r in results]

        good_scores, good_maps = outputs(good)
        row = {"real": metrics(good_scores, good_maps, *outputs(real), masks)}
        for family in families:
            row[family] = metrics(good_scores, good_maps, *outputs(synthetic[family][0]), synthetic[family][1])
        table[name] = row
        print(f"| {name} | " + " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*row[c]) for c in columns) + " |",
              flush=True)

    agreement(table, list(table), families, args.compare)
    if "r18-random" in table:  # not one of auto's candidates: the agreement among those alone
        agreement(table, [n for n in table if n != "r18-random"], families, args.compare)


def agreement(table: dict, names: list[str], families: list[str], compare: list[str] | None) -> None:
    """Print the Spearman correlations (module docstring) over the candidates ``names``."""
    real_mean = [np.mean(table[n]["real"]) for n in names]
    print(f"\nSpearman with the real mean (image, pixel, PRO averaged), over {len(names)} candidates:")
    for family in families:
        for i, metric in enumerate(("image AUROC", "pixel AUROC", "PRO")):
            rho = spearmanr([table[n][family][i] for n in names], [table[n]["real"][i] for n in names])[0]
            print(f"  {family} {metric} vs real {metric}: {rho:+.2f}")
        rho = spearmanr([np.mean(table[n][family]) for n in names], real_mean)[0]
        print(f"  {family} mean vs real mean: {rho:+.2f}")
    default_sets = [",".join(f for f in FAMILIES if f in families), ",".join(families)]
    for subset in dict.fromkeys(compare or default_sets):
        chosen = subset.split(",")
        synthetic_mean = [np.mean([np.mean(table[n][f]) for f in chosen]) for n in names]
        print(f"  mean of {subset}: {spearmanr(synthetic_mean, real_mean)[0]:+.2f}")


if __name__ == "__main__":
    main()
