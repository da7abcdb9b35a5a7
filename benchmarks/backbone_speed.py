"""Feature-extraction speed (images/s) of plain vs prepared backbones (padim.fusion), as a table.

Times the ``FeatureExtractor`` forward (normalisation + backbone up to the last hooked layer)
on one in-memory random batch, for each backbone / hook set / thread count. "before" is the
backbone as loaded (``build_backbone(..., prepare=False)``), "after" the one ``build_backbone``
returns now (``prepare_for_inference``). Variants run interleaved — A B B A A B … — so that load
from other jobs on a shared machine hits both alike; the table gives medians, the spread
(min–max of the runs, relative to the median) and the load average before and after.

    python benchmarks/backbone_speed.py                      # 256×256, batch 16, 1 and 2 threads
    python benchmarks/backbone_speed.py --repeats 9 --ablation

``--ablation`` adds two intermediate variants: "fold" (BatchNorm folded only) and "nchw"
(everything but channels_last). resnet18 runs with random weights (speed does not depend on
them; its ImageNet weights would need a download); EfficientNet-Lite0 with its packaged ones.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
import torchvision

from padim.backbones import build_backbone, get_spec
from padim.features import FeatureExtractor
from padim.fusion import fold_batch_norms, prepare_for_inference

# name: (backbone, hook points; None: the registry's default_layers)
CONFIGS = {
    "lite0-4-10-14": ("efficientnet_lite0", ("_blocks.4", "_blocks.10", "_blocks.14")),
    "lite0-2-4-10": ("efficientnet_lite0", ("_blocks.2", "_blocks.4", "_blocks.10")),  # shallower (tiles)
    "resnet18": ("resnet18", None),
}


def plain_backbone(name: str) -> torch.nn.Module:
    if name == "resnet18":
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    return build_backbone(name, prepare=False)


def variants(name: str, ablation: bool) -> dict[str, torch.nn.Module]:
    plain = plain_backbone(name)
    out = {"before": plain}
    if ablation:
        folded = copy.deepcopy(plain)
        fold_batch_norms(folded)
        out["fold"] = folded
        out["nchw"] = prepare_for_inference(copy.deepcopy(plain), keep_state_dict=True, cpu_channels_last=False)
    out["after"] = prepare_for_inference(copy.deepcopy(plain), keep_state_dict=True)
    return out


def time_once(extractor: FeatureExtractor, x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    extractor(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (after 1 warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ablation", action="store_true", help="also time 'fold' and 'nchw' variants")
    args = parser.parse_args()

    device = torch.device(args.device)
    x = torch.rand(args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    load_start = os.getloadavg()
    rows = []
    for config in args.configs:
        name, hooks = CONFIGS[config]
        spec = get_spec(name)
        layers = list(hooks or spec.default_layers)
        extractors = {k: FeatureExtractor(m, spec, layers).to(device) for k, m in variants(name, args.ablation).items()}
        order = list(extractors)
        for threads in args.threads:
            torch.set_num_threads(threads)
            times: dict[str, list[float]] = {k: [] for k in order}
            for extractor in extractors.values():
                time_once(extractor, x)  # warm-up: first-call allocations, oneDNN primitives
            load_before = os.getloadavg()[0]
            for rep in range(args.repeats):
                for key in (order if rep % 2 == 0 else order[::-1]):
                    times[key].append(time_once(extractors[key], x))
            load_after = os.getloadavg()[0]
            for key in order:
                runs = times[key]
                median = statistics.median(runs)
                rows.append({
                    "config": config, "layers": ",".join(layers), "threads": threads, "variant": key,
                    "images_per_s": args.batch_size / median, "median_s": median,
                    "spread": (max(runs) - min(runs)) / median,
                    "speedup": statistics.median(times["before"]) / median,
                    "load": f"{load_before:.1f}→{load_after:.1f}",
                })
            summary = ", ".join(f"{r['variant']} {r['images_per_s']:.1f}" for r in rows[-len(order):])
            print(f"# {config} {threads} thread(s): images/s {summary}", flush=True)

    print()
    print(f"{args.size}×{args.size}, batch {args.batch_size}, {args.repeats} interleaved runs per variant, "
          f"device {device}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; load average (1 min) at start {load_start[0]:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")
    print()
    print("| backbone | hooks | threads | variant | images/s (median) | s/batch | spread (max−min)/median "
          "| speed-up | load avg |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['config']} | {r['layers']} | {r['threads']} | {r['variant']} | {r['images_per_s']:.1f} | "
              f"{r['median_s']:.3f} | {100 * r['spread']:.0f}% | {r['speedup']:.2f}× | {r['load']} |")


if __name__ == "__main__":
    main()
