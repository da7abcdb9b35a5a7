"""The scoring core: the stage-by-stage embedding equals the hooked backbone's, and the head's
distances and maps equal naive references (numpy solves, a Python loop over cells)."""

import numpy as np
import pytest
import torch
from torch import nn

from padim.backbones import get_spec
from padim.features import FeatureExtractor, embedding_concat, random_channel_index
from padim.maps import distance_grid_to_maps
from padim.net import Embedder, ScoreHead, ScoringNet, backbone_stages


def hooked_embedding(backbone, spec, layers, index, images):
    """The reference: forward hooks on the whole backbone, then the original embedding_concat."""
    extractor = FeatureExtractor(backbone, spec, layers)
    try:
        return embedding_concat(extractor(images), index)
    finally:
        extractor.remove_hooks()


@pytest.mark.parametrize("layers", [("_blocks.2", "_blocks.4", "_blocks.10"), ("_blocks.10", "_blocks.4")])
def test_lite0_embedding_equals_hooked_backbone(lite0_backbone, layers):
    spec = get_spec("efficientnet_lite0")
    total = sum(spec.hook_point(n).channels for n in layers)
    index = random_channel_index(total, 50, seed=3)
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    got = Embedder(lite0_backbone, spec, layers, index)(images)
    want = hooked_embedding(lite0_backbone, spec, layers, index, images)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert Embedder(lite0_backbone, spec, layers, index).stage_names[-1] == "_blocks.10"  # nothing beyond


@pytest.mark.parametrize("prepare", [False, True])
def test_resnet18_embedding_equals_hooked_backbone(prepare):
    import torchvision

    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None).eval()
    if prepare:
        from padim.fusion import prepare_for_inference

        backbone = prepare_for_inference(backbone)
    spec = get_spec("resnet18")
    layers = ("layer1", "layer2", "layer3")
    images = torch.rand(2, 3, 64, 64)
    got = Embedder(backbone, spec, layers, None)(images)
    want = hooked_embedding(backbone, spec, layers, None, images)
    assert got.shape == (2, 64 + 128 + 256, 16, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_cpu_batch_runs_in_passes_whose_largest_output_the_allocator_reuses(lite0_backbone, monkeypatch):
    # Lite0's largest layer output is 24 float32 per input pixel (block 1's 96 channels at stride 2):
    # at 160×400 that is 6.144 MB an image, so 5 images fit glibc's 32 MiB reuse limit and a batch
    # of 16 runs in passes of 5, 5, 5 and 1. Each image's maps must be those of the image alone
    # through the hooked backbone, the layout channels_last as the Gaussians read it, and the
    # clock each layer's time summed over the passes.
    import padim.net as net_module

    spec = get_spec("efficientnet_lite0")
    layers = spec.default_layers
    embedder = Embedder(lite0_backbone, spec, layers)
    assert embedder.images_per_pass(torch.empty(16, 3, 160, 400)) == 5  # 33 554 432 // 6 144 000
    assert embedder.images_per_pass(torch.empty(2, 3, 1334, 1614)) == 1  # a 12 MP input: one at a time
    monkeypatch.setattr(net_module, "REUSED_BLOCK_BYTES", 2 * 96 * 32 * 48)  # 2 images of 32×48 a pass
    images = torch.rand(5, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    calls = []
    original = embedder._pass
    monkeypatch.setattr(embedder, "_pass", lambda x, clock: calls.append(len(x)) or original(x, clock))
    clock: dict = {}
    maps = embedder.feature_maps(images, clock)
    assert calls == [2, 2, 1]
    for k in range(5):
        alone = hooked_embedding(lite0_backbone, spec, layers, None, images[k:k + 1])
        torch.testing.assert_close(embedding_concat([m[k:k + 1] for m in maps]), alone, rtol=1e-5, atol=1e-5)
    if embedder.channels_last:
        assert all(m.is_contiguous(memory_format=torch.channels_last) for m in maps)
    assert set(clock) == set(layers)
    order = [clock[name] for name in layers]  # deeper layers are ready later
    assert order == sorted(order)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="EfficientNet-Lite and torchvision ResNet"):
        backbone_stages(nn.Sequential(nn.Conv2d(3, 8, 3)))


def random_gaussians(g, d, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(g, d, d))
    cov = a @ a.transpose(0, 2, 1) / d + 0.5 * np.eye(d)
    mean = rng.normal(size=(g, d))
    whitener = np.linalg.inv(np.linalg.cholesky(cov))
    return cov, mean, whitener


def naive_distance(x, mean, cov):
    diff = x - mean
    return float(np.sqrt(diff @ np.linalg.solve(cov, diff)))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_head_distances_per_position_equal_numpy_solves(layout):
    """Also for a channels_last embedding (the CPU's fused backbone), which the head reads without a copy."""
    b, d, h, w = 2, 5, 3, 4
    cov, mean, whitener = random_gaussians(h * w, d)
    emb = np.random.default_rng(1).normal(size=(b, d, h, w))
    head = ScoreHead(torch.tensor(mean, dtype=torch.float32), torch.tensor(whitener, dtype=torch.float32),
                     1, (h * 4, w * 4), 4, 0.0)
    embedding = torch.tensor(emb, dtype=torch.float32).contiguous(memory_format=layout)
    got = head.distances(embedding.flatten(2)).numpy()  # [B, P]
    for i in range(b):
        for p in range(h * w):
            assert got[i, p] == pytest.approx(naive_distance(emb[i, :, p // w, p % w], mean[p], cov[p]), rel=1e-4)


def test_head_cells_and_shared_gaussian_maps_equal_a_loop():
    b, d, h, w, k = 2, 4, 4, 6, 2
    emb = np.random.default_rng(2).normal(size=(b, d, h, w))
    for cell, g, which in ((k, (h // k) * (w // k), lambda y, x: (y // k) * (w // k) + x // k),
                           ("image", 1, lambda y, x: 0)):
        cov, mean, whitener = random_gaussians(g, d, seed=3)
        head = ScoreHead(torch.tensor(mean, dtype=torch.float32), torch.tensor(whitener, dtype=torch.float32),
                         cell, (h * 4, w * 4), 4, 2.0)
        grid = np.array([[[naive_distance(emb[i, :, y, x], mean[which(y, x)], cov[which(y, x)])
                           for x in range(w)] for y in range(h)] for i in range(b)])
        want = distance_grid_to_maps(torch.tensor(grid, dtype=torch.float32), (h * 4, w * 4), 2.0, 4)
        got = head(torch.tensor(emb, dtype=torch.float32))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_scoring_net_score_is_the_map_maximum(lite0_backbone):
    spec = get_spec("efficientnet_lite0")
    embedder = Embedder(lite0_backbone, spec, ["_blocks.2"], None)
    d = spec.hook_point("_blocks.2").channels
    _, mean, whitener = random_gaussians(1, d)
    net = ScoringNet(embedder, ScoreHead(torch.tensor(mean, dtype=torch.float32),
                                         torch.tensor(whitener, dtype=torch.float32), "image", (32, 32), 4, 1.0))
    maps, scores = net(torch.rand(3, 3, 32, 32))
    assert maps.shape == (3, 32, 32)
    np.testing.assert_array_equal(scores.numpy(), maps.numpy().reshape(3, -1).max(axis=1))


def test_large_models_score_from_the_packed_whitener_chunk_by_chunk(monkeypatch):
    """Above DENSE_WHITENER_MAX_BYTES the head unpacks each chunk of positions from the packed
    storage instead of holding a dense float32 whitener: same distances, no dense copy kept."""
    import padim.model as model_module
    import padim.net as net_module
    from padim import PaDiM

    rng = np.random.default_rng(0)
    images = [(rng.random((64, 64, 3)) * 0.2 + 0.4).astype(np.float32) for _ in range(6)]
    model = PaDiM(image_size=64, d=20, device="cpu", workers=0, calibration_folds=0, config="fixed").fit(images)
    model.gaussian_.drop_dense()
    monkeypatch.setattr(net_module, "POSITION_CHUNK", 50)  # several chunks, the last one short
    dense_scores = model.score_samples(images[:3])
    model.gaussian_.drop_dense()
    monkeypatch.setattr(model_module, "DENSE_WHITENER_MAX_BYTES", 0)
    head = model._head()
    assert head.whitener is None and head.whitener_rows is not None
    chunked_scores = model.score_samples(images[:3])
    assert model.gaussian_._whitener is None  # no dense copy was made
    np.testing.assert_array_equal(chunked_scores, dense_scores)
