"""padim.data: how many decoding processes a run gets, and that the loader uses that many."""

import numpy as np
import pytest
from PIL import Image

from padim.data import Resize, decoding_workers, make_loader


@pytest.mark.parametrize("workers, n, device, cores, threads, expected", [
    (3, 100, "cpu", 2, 2, 3),        # an explicit count is kept ...
    (3, 20, "cpu", 2, 2, 2),         # ... up to one per batch (batch 16: 2 batches)
    (0, 100, "cuda", 16, 16, 0),
    ("auto", 100, "cpu", 2, 2, 0),   # 2 cores, 2 compute threads: decode inline
    ("auto", 100, "cpu", 16, 16, 0),  # PyTorch holds every core
    ("auto", 100, "cpu", 16, 15, 1),  # one core left over
    ("auto", 100, "cpu", 16, 4, 2),   # many left over: at most 2
    ("auto", 100, "cuda", 16, 16, 4),  # a GPU computes: up to 4 processes decode
    ("auto", 100, "cuda", 2, 2, 1),
    ("auto", 32, "cuda", 16, 16, 0),  # two batches: start-up costs more than it saves
    ("auto", 33, "cuda", 16, 16, 3),  # three batches: at most one process per batch
])
def test_decoding_worker_rule(workers, n, device, cores, threads, expected):
    assert decoding_workers(workers, n, 16, device, cores=cores, threads=threads) == expected


def test_loader_decodes_inline_by_default_on_a_small_machine(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(paths[-1])
    import torch
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    loader = make_loader(paths, Resize((8, 8)), 4, "auto", pin_memory=False)
    assert loader.num_workers == 0
    values = [float(batch.images[j, 0, 0, 0]) * 255 for batch in loader for j in range(len(batch.indices))]
    np.testing.assert_allclose(values, np.arange(40), atol=1e-3)  # in input order


def test_as_sources_reads_array_layouts_and_refuses_the_ambiguous_one():
    import torch

    from padim.sources import as_sources

    rgb = np.zeros((16, 20, 3), np.uint8)
    assert len(as_sources(rgb)) == 1 and as_sources(rgb)[0].shape == (16, 20, 3)
    assert len(as_sources(np.zeros((16, 20), np.uint8))) == 1  # one gray image
    assert len(as_sources(np.zeros((5, 16, 20), np.uint8))) == 5  # a stack of gray images
    assert len(as_sources(np.zeros((2, 16, 20, 3), np.uint8))) == 2  # a stack of colour images
    tensor = torch.zeros(16, 20, 3, requires_grad=True)  # a tensor that needs grad still converts
    assert as_sources(tensor)[0].shape == (16, 20, 3)
    for channels in (3, 4):  # channels first, or 3-4 gray images: refused, with both readings' calls
        with pytest.raises(ValueError, match=r"either one channels-first image or .* array.transpose\(1, 2, 0\)"):
            as_sources(np.zeros((channels, 16, 20), np.uint8))
    with pytest.raises(ValueError, match="channels-first"):
        as_sources(torch.zeros(3, 16, 20))
    assert len(as_sources(list(np.zeros((3, 16, 20), np.uint8)))) == 3  # the list is unambiguous
    batch = np.arange(2 * 3 * 16 * 20, dtype=np.float32).reshape(2, 3, 16, 20)  # torch's [N, C, H, W]
    for stack in (batch, torch.from_numpy(batch)):
        images = as_sources(stack)
        assert len(images) == 2
        for n, image in enumerate(images):
            assert image.shape == (16, 20, 3)
            for c in range(3):  # by hand: channel c of image n is batch[n, c]
                assert np.array_equal(image[:, :, c], batch[n, c])
    assert as_sources(np.zeros((2, 16, 20, 1), np.uint8))[0].shape == (16, 20, 1)  # channels last stays
