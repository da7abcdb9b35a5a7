"""Would auto-configuration's synthetic signal choose a configuration it does not try today?

Fits ``PaDiM()`` on ``--data`` (a folder of good images) with one extra candidate tried right after
the default (so that the budget reaches it), and prints the candidate table and each candidate's
image AUROC per synthetic defect family. Compare its selection score with its real metrics
(``padim fit --config fixed`` with the same options, then ``padim eval``) to see whether the
signal would find it.

    python benchmarks/auto_extra_candidate.py --data ../shared/data/cookies/train/good \\
        --backbone resnet18 --d 100 --weights /tmp/r18/resnet18_random.pth --budget 16x

``--random-weights FILE`` first writes seeded random ResNet18 weights to FILE (torchvision's
ImageNet weights cannot be downloaded on an offline machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write_random_resnet18(path) -> None:
    """Seeded random-weight ResNet18 weights (RESULTS.md §32's) to ``path``: the same file every time."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of good images")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--d", type=int, default=None)
    parser.add_argument("--layers", default=None, help="comma-separated hook points (default: the backbone's)")
    parser.add_argument("--weights", default=None, help="local weights file for the extra candidate")
    parser.add_argument("--random-weights", action="store_true", help="write seeded random ResNet18 weights to --weights first")
    parser.add_argument("--budget", default="16x")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import padim.autoconfig as auto
    from padim import PaDiM

    torch.set_num_threads(args.threads)
    if args.random_weights:
        write_random_resnet18(args.weights)
    params = {"backbone": args.backbone, "layers": args.layers.split(",") if args.layers else None,
              "weights": args.weights}
    if args.d is not None:
        params["d"] = args.d
    listed = auto.candidates

    def with_extra(backbone, image_size):
        out = listed(backbone, image_size)
        return out[:1] + [auto.Candidate("extra", params)] + out[1:]

    auto.candidates = with_extra
    model = PaDiM(device="cpu", threads=args.threads, budget=args.budget, progress=False).fit(args.data)
    print(f"extra = {params}")
    print(auto.format_table(model.auto_table_, model.auto_choice_))
    for row in model.auto_table_:
        if row.get("family_auroc"):
            print(row["name"], {k: round(v, 3) for k, v in row["family_auroc"].items()})


if __name__ == "__main__":
    main()
