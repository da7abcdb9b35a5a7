"""Receptive fields of the hook points: the registry's analytic values against a hand computation
and against an empirical reference (the support of the gradient of one output position with
respect to the input of the real architecture); and the registry's activation peak against the
module outputs of a forward pass."""

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from padim.backbones import BACKBONES, get_spec, receptive_field


def test_resnet18_receptive_fields_by_hand():
    # r: receptive-field side, j: jump (input pixels between neighbouring positions); a k×k layer
    # adds (k − 1)·j, then j is multiplied by its stride.
    # conv1 7×7/2: r = 1 + 6·1 = 7, j = 2; maxpool 3×3/2: r = 7 + 2·2 = 11, j = 4.
    # layer1: 2 BasicBlocks = four 3×3/1 convs: r = 11 + 4·(2·4) = 43.
    # layer2: first 3×3/2: r = 43 + 2·4 = 51, j = 8; three more 3×3: r = 51 + 3·16 = 99.
    # layer3: first 3×3/2: r = 99 + 2·8 = 115, j = 16; three more: r = 115 + 3·32 = 211.
    # layer4: first 3×3/2: r = 211 + 2·16 = 243, j = 32; three more: r = 243 + 3·64 = 435.
    spec = get_spec("resnet18")
    assert [spec.hook_point(f"layer{i}").receptive_field for i in (1, 2, 3, 4)] == [43, 99, 211, 435]
    assert [spec.hook_point(f"layer{i}").stride for i in (1, 2, 3, 4)] == [4, 8, 16, 32]


def test_receptive_field_recursion():
    assert receptive_field([]) == []
    assert receptive_field([(3, 1), (3, 1)]) == [3, 5]
    assert receptive_field([(2, 2), (2, 2), (3, 1)]) == [2, 4, 12]  # jumps 1, 2, 4


def test_lite0_block10_by_hand():
    # stem 3×3/2: r 3, j 2. Blocks (depthwise kernel/stride): 0: 3/1 → 7; 1: 3/2 → 11, j 4;
    # 2: 3 → 19; 3: 5/2 → 35, j 8; 4: 5 → 67; 5: 3/2 → 83, j 16; 6, 7: 3 → 115, 147;
    # 8, 9, 10: 5 → 211, 275, 339.
    spec = get_spec("efficientnet_lite0")
    assert [spec.hook_point(f"_blocks.{i}").receptive_field for i in (2, 4, 10)] == [19, 67, 339]


# ------------------------------------------------------------------ empirical reference

def _positive_copy(model: nn.Module) -> nn.Module:
    """The architecture with every weight positive and every BatchNorm the identity, max pooling
    replaced by average pooling of the same window: every activation is then positive, no ReLU
    or pooling selects, and the gradient of an output is non-zero exactly on its receptive field."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            nn.init.constant_(module.weight, 1.0 / fan_in)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight), nn.init.zeros_(module.bias)
            module.running_mean.zero_(), module.running_var.fill_(1.0)
    for name, module in list(model.named_children()):
        if isinstance(module, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(module.kernel_size, module.stride, module.padding))
    return model.eval()


class _Stop(Exception):
    pass


def _output_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    found = {}

    def hook(_m, _i, out):
        found["out"] = out
        raise _Stop

    handle = dict(model.named_modules())[name].register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return found["out"]


def empirical_receptive_field(model: nn.Module, name: str, side: int, dtype=torch.float64) -> tuple[int, int]:
    """Height and width of the input region on which the centre output of ``name`` depends."""
    model = model.to(dtype)
    x = (1e-4 * (0.5 + torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)))).to(dtype)
    x.requires_grad_(True)
    out = _output_of(model, name, x)
    cy, cx = out.shape[-2] // 2, out.shape[-1] // 2
    (grad,) = torch.autograd.grad(out[0, :, cy, cx].sum(), x)
    support = grad[0].abs().sum(0) > 0
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < side - 1 and cols.max() < side - 1, \
        "the receptive field reaches the input border: use a larger input"
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _architecture(backbone: str) -> nn.Module:
    if backbone.startswith("efficientnet_lite"):
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(backbone.replace("_", "-"))
    return getattr(tvm, backbone)(weights=None)


CASES = [(name, layer) for name, spec in BACKBONES.items() for layer in spec.default_layers]
CASES.append(("resnet18", "layer4"))


@pytest.mark.parametrize("backbone, layer", CASES)
def test_receptive_field_matches_the_gradient_support(backbone, layer):
    spec = get_spec(backbone)
    point = spec.hook_point(layer)
    side = -(-(point.receptive_field + 64) // 32) * 32
    dtype = torch.float32 if backbone == "wide_resnet50_2" else torch.float64  # WR50: speed
    model = _positive_copy(_architecture(backbone))
    assert empirical_receptive_field(model, layer, side, dtype) == (point.receptive_field,) * 2


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_peak_activation_matches_the_module_outputs(backbone):
    """The registry's peak (floats per input pixel read + written by one layer) against the
    largest input + output of any leaf module up to the deepest default hook point (at 256 px
    the "same" padding of EfficientNet-Lite adds one row and column: 0.8 %)."""
    spec = get_spec(backbone)
    model = _architecture(backbone).eval()
    side, sizes = 256, []
    hooks = [m.register_forward_hook(lambda _m, i, o: sizes.append(i[0].numel() + o.numel()))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        deepest = max(spec.default_layers, key=lambda n: [p.name for p in spec.hook_points].index(n))
        _output_of(model, deepest, torch.rand(1, 3, side, side))
    for h in hooks:
        h.remove()
    assert max(sizes) / side**2 == pytest.approx(spec.peak_activation, rel=0.02)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_weight_bytes_are_the_networks_float32_parameters_and_buffers(backbone):
    """The memory plan's process estimate counts the backbone by the registry's ``weight_bytes``."""
    model = _architecture(backbone)
    values = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    assert get_spec(backbone).weight_bytes == 4 * values
