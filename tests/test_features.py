"""padim.features: embedding against the original PaDiM unfold/fold code; hooks on real backbones."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from padim.backbones import BACKBONES, LITE_MEAN, LITE_STD, get_spec
from padim.features import FeatureExtractor, embedding_concat, random_channel_index


def original_embedding_concat(x, y):
    """The original PaDiM implementation (xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master)."""
    B, C1, H1, W1 = x.size()
    _, C2, H2, W2 = y.size()
    s = int(H1 / H2)
    x = F.unfold(x, kernel_size=s, dilation=1, stride=s)
    x = x.view(B, C1, -1, H2, W2)
    z = torch.zeros(B, C1 + C2, x.size(2), H2, W2)
    for i in range(x.size(2)):
        z[:, :, i, :, :] = torch.cat((x[:, :, i, :, :], y), 1)
    z = z.view(B, -1, H2 * W2)
    z = F.fold(z, kernel_size=s, output_size=(H1, W1), stride=s)
    return z


def original_multi(maps):
    embedding = maps[0]
    for fmap in maps[1:]:
        embedding = original_embedding_concat(embedding, fmap)
    return embedding


def random_maps(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for shape in shapes]


@pytest.mark.parametrize("shapes", [
    [(2, 3, 8, 8), (2, 4, 4, 4)],
    [(2, 3, 8, 12), (2, 5, 2, 3)],  # non-square, stride ratio 4
    [(1, 4, 16, 16), (1, 6, 8, 8), (1, 5, 4, 4)],  # three layers, strides 1:2:4
    [(3, 2, 12, 8), (3, 3, 6, 4), (3, 4, 3, 2)],
])
def test_embedding_concat_equals_original(shapes):
    maps = random_maps(shapes)
    ours = embedding_concat(maps)
    ref = original_multi(maps)
    assert ours.shape == ref.shape == (shapes[0][0], sum(s[1] for s in shapes), *shapes[0][2:])
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_embedding_concat_same_resolution_is_plain_concat():
    maps = random_maps([(2, 3, 5, 5), (2, 4, 5, 5)])
    torch.testing.assert_close(embedding_concat(maps), torch.cat(maps, 1), rtol=0, atol=0)


def test_a_grid_that_does_not_divide_is_nearest_interpolated():
    """An odd input's deeper grid (e.g. 7×5 under 14×9) is upsampled by the interpolation's own indices."""
    fine, coarse = random_maps([(2, 3, 14, 9), (2, 4, 7, 5)], seed=2)
    rows = (torch.arange(14) * 7 // 14)  # nearest: floor(dst · in / out)
    cols = (torch.arange(9) * 5 // 9)
    expected = torch.cat([fine, coarse[:, :, rows][:, :, :, cols]], 1)
    torch.testing.assert_close(embedding_concat([fine, coarse]), expected, rtol=0, atol=0)


def test_channels_last_and_half_maps_give_the_same_embedding():
    """Backbone outputs in channels_last (the CPU's fused backbone) or float16 (a feature bank)
    are assembled as the contiguous float32 ones."""
    maps = random_maps([(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 2, 2)], seed=3)
    reference = original_multi(maps)
    last = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    torch.testing.assert_close(embedding_concat(last), reference, rtol=0, atol=0)
    half = embedding_concat([m.half() for m in maps])
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), original_multi([m.half().float() for m in maps]), rtol=0, atol=0)


@pytest.mark.parametrize("index", [
    [0, 2, 5, 7, 11],  # spans all three layers
    [1, 2],  # first layer only: the other layers contribute no channel
    [9, 10, 14],  # last two layers only
    list(range(15)),  # all
])
def test_channel_index_equals_selecting_after_concatenation(index):
    maps = random_maps([(2, 4, 8, 8), (2, 6, 4, 4), (2, 5, 2, 2)], seed=1)
    idx = torch.tensor(index)
    got = embedding_concat(maps, idx)
    expected = original_multi(maps)[:, idx]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_random_channel_index():
    idx = random_channel_index(448, 100, seed=0)
    assert idx.shape == (100,)
    assert torch.equal(idx, idx.sort().values)
    assert len(set(idx.tolist())) == 100 and 0 <= int(idx.min()) and int(idx.max()) < 448
    assert torch.equal(idx, random_channel_index(448, 100, seed=0))
    assert not torch.equal(idx, random_channel_index(448, 100, seed=1))
    assert random_channel_index(448, 448, seed=0) is None
    assert random_channel_index(448, 1000, seed=0) is None
    assert random_channel_index(448, None, seed=0) is None
    with pytest.raises(ValueError):
        random_channel_index(448, 0, seed=0)


# ---------------------------------------------------------------- FeatureExtractor on Lite0

def test_extractor_default_layers_have_declared_channels_and_strides(lite0_backbone):
    spec = get_spec("efficientnet_lite0")
    extractor = FeatureExtractor(lite0_backbone, spec, spec.default_layers)
    h, w = 96, 64
    outputs = extractor(torch.rand(2, 3, h, w))
    assert len(outputs) == len(spec.default_layers)
    for out, name in zip(outputs, spec.default_layers):
        point = spec.hook_point(name)
        assert out.shape == (2, point.channels, h // point.stride, w // point.stride), name
    assert extractor.channels == [spec.hook_point(n).channels for n in spec.default_layers]


def test_extractor_normalises_and_matches_manual_hooks(lite0_backbone):
    spec = get_spec("efficientnet_lite0")
    layers = list(spec.default_layers)
    images = torch.rand(2, 3, 64, 64)
    captured = {}
    modules = dict(lite0_backbone.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o)) for n in layers]
    try:
        mean = torch.tensor(LITE_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(LITE_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            lite0_backbone((images - mean) / std)
    finally:
        for handle in handles:
            handle.remove()
    extractor = FeatureExtractor(lite0_backbone, spec, layers)
    outputs = extractor(images)
    for out, name in zip(outputs, layers):
        torch.testing.assert_close(out, captured[name])
    # a second call gives the same result (hooks do not pile up state)
    for a, b in zip(extractor(images), outputs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_forward_stops_after_last_hooked_layer(lite0_backbone):
    spec = get_spec("efficientnet_lite0")
    extractor = FeatureExtractor(lite0_backbone, spec, ["_blocks.2", "_blocks.4"])
    fired = []
    modules = dict(lite0_backbone.named_modules())
    handles = [modules[n].register_forward_hook(lambda *a, n=n: fired.append(n))
               for n in ("_blocks.3", "_blocks.5", "_blocks.15", "_conv_head", "_fc")]
    try:
        outputs = extractor(torch.rand(1, 3, 64, 64))
    finally:
        for handle in handles:
            handle.remove()
    assert [o.shape[1] for o in outputs] == [24, 40]
    assert "_blocks.3" in fired  # the hooks work: layers before the last hooked one ran
    assert not {"_blocks.5", "_blocks.15", "_conv_head", "_fc"} & set(fired), fired


def test_hooks_listed_out_of_execution_order(lite0_backbone):
    spec = get_spec("efficientnet_lite0")
    images = torch.rand(1, 3, 64, 64)
    in_order = FeatureExtractor(lite0_backbone, spec, ["_blocks.2", "_blocks.4", "_blocks.10"])(images)
    shuffled = FeatureExtractor(lite0_backbone, spec, ["_blocks.10", "_blocks.2", "_blocks.4"])(images)
    assert [o.shape for o in shuffled] == [in_order[2].shape, in_order[0].shape, in_order[1].shape]
    torch.testing.assert_close(shuffled[0], in_order[2])
    torch.testing.assert_close(shuffled[1], in_order[0])
    torch.testing.assert_close(shuffled[2], in_order[1])


def test_extractors_sharing_a_backbone_do_not_interfere(lite0_backbone):
    # Regression: an extractor's hooks stayed active on the backbone and stopped every later
    # pass through it (another extractor's, or a direct call) as soon as they had all fired.
    spec = get_spec("efficientnet_lite0")
    images = torch.rand(1, 3, 64, 64)
    shallow = FeatureExtractor(lite0_backbone, spec, ["_blocks.2"])
    deep = FeatureExtractor(lite0_backbone, spec, ["_blocks.10"])
    assert deep(images)[0].shape == (1, 112, 4, 4)
    assert shallow(images)[0].shape == (1, 24, 16, 16)
    with torch.no_grad():
        assert lite0_backbone(images).shape == (1, 1000)  # a direct call runs to the end
    shallow.remove_hooks()
    deep.remove_hooks()


def test_extractor_rejects_bad_layers(lite0_backbone):
    spec = get_spec("efficientnet_lite0")
    with pytest.raises(ValueError):
        FeatureExtractor(lite0_backbone, spec, [])
    with pytest.raises(ValueError, match="_blocks.4"):
        FeatureExtractor(lite0_backbone, spec, ["_blocks.4", "_blocks.4"])
    with pytest.raises(ValueError, match="choose from"):
        FeatureExtractor(lite0_backbone, spec, ["layer1"])


# ---------------------------------------------------------------- registry declarations

def _declared_vs_real(model, spec, size=64):
    """Run ``model`` on a size×size input with hooks on every declared point; return mismatches."""
    modules = dict(model.named_modules())
    shapes = {}
    handles = []
    for point in spec.hook_points:
        assert point.name in modules, f"{spec.name}: no module {point.name}"
        handles.append(modules[point.name].register_forward_hook(
            lambda m, i, o, n=point.name: shapes.__setitem__(n, tuple(o.shape))))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    bad = []
    for point in spec.hook_points:
        expected = (1, point.channels, size // point.stride, size // point.stride)
        if shapes[point.name] != expected:
            bad.append((point.name, expected, shapes[point.name]))
    return bad


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_registry_matches_architecture(variant):
    from efficientnet_lite_pytorch import EfficientNet

    spec = BACKBONES[f"efficientnet_lite{variant}"]
    model = EfficientNet.from_name(f"efficientnet-lite{variant}")
    assert len(spec.hook_points) == len(model._blocks)  # every block declared, none invented
    assert _declared_vs_real(model, spec) == []
    assert set(spec.default_layers) <= {p.name for p in spec.hook_points}
    assert (spec.mean, spec.std) == (LITE_MEAN, LITE_STD)


@pytest.mark.parametrize("arch", ["resnet18", "wide_resnet50_2"])
def test_torchvision_registry_matches_architecture(arch):
    spec = BACKBONES[arch]
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    assert _declared_vs_real(model, spec) == []
    assert spec.default_layers == ("layer1", "layer2", "layer3")
    total = sum(spec.hook_point(n).channels for n in spec.default_layers)
    assert total == {"resnet18": 448, "wide_resnet50_2": 1792}[arch]
    assert spec.default_d == {"resnet18": 100, "wide_resnet50_2": 550}[arch]
