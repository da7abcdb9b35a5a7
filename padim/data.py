"""Image sources (padim.sources) into batches for the model: decoding, value ranges, resizing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .io import ImageReadError, load_image
from .value_range import ValueRange


def source_name(source: Any, index: int) -> str:
    """A readable name for messages: the path, or the position in the input list."""
    return str(source) if isinstance(source, Path) else f"image #{index}"


class Resize:
    """Picklable transform: RGB image (uint8, or float in [0, 1]) → float ``[3, H, W]`` tensor in
    [0, 1] at a fixed size (area averaging when shrinking)."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        h, w = self.size
        if image.shape[:2] != (h, w):
            shrink = h * w < image.shape[0] * image.shape[1]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        if chw.dtype == np.uint8:  # numpy's division, the same bits as torch's: ~100× faster on a busy CPU
            chw = np.divide(chw, np.float32(255.0), dtype=np.float32)
        return torch.from_numpy(chw)


@dataclass
class Batch:
    """Images that loaded (stacked when their sizes agree) and the errors of those that did not."""

    indices: list[int]
    images: torch.Tensor | list[torch.Tensor]
    original_sizes: list[tuple[int, int]]
    errors: list[tuple[int, str]]
    originals: list[np.ndarray] | None = None  # the decoded images before resizing, when asked for


class ImageDataset(Dataset):
    """Loads ``sources[i]`` mapped to [0, 1] by ``value_range`` (the model's, the same for every
    image of pixel kind ``value_kind``; None: each pixel type's full scale) and applies
    ``transform``; read errors are returned, not raised. Picklable for DataLoader workers.
    ``keep_original``: also return the decoded image (as :func:`padim.io.load_image` with
    ``keep_uint8`` gives it), so that drawing it needs no second decode."""

    def __init__(self, sources: Sequence, transform: Callable[[np.ndarray], torch.Tensor],
                 value_range: ValueRange | None = None, value_kind: str | None = None,
                 keep_original: bool = False):
        self.sources = sources
        self.transform = transform
        self.value_range = value_range
        self.value_kind = value_kind
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.sources[index], keep_uint8=True, value_range=self.value_range,
                               value_kind=self.value_kind)
        except ImageReadError as exc:
            return (index, None, (0, 0), str(exc)) + ((None,) if self.keep_original else ())
        item = (index, self.transform(image), image.shape[:2], "")
        return item + (image,) if self.keep_original else item  # (index, tensor, size, error[, image])


def collate(items) -> Batch:
    ok = [item for item in items if item[1] is not None]
    tensors = [item[1] for item in ok]
    if tensors and all(t.shape == tensors[0].shape for t in tensors):
        images: torch.Tensor | list[torch.Tensor] = torch.stack(tensors)
    else:
        images = tensors
    return Batch(
        indices=[item[0] for item in ok],
        images=images,
        original_sizes=[tuple(item[2]) for item in ok],
        errors=[(item[0], item[3]) for item in items if item[1] is None],
        originals=[item[4] for item in ok] if ok and len(ok[0]) > 4 else None,
    )


def decoding_workers(workers: int | str, n_images: int, batch_size: int, device_type: str = "cpu",
                     cores: int | None = None, threads: int | None = None) -> int:
    """Decoding processes for ``n_images`` file images: ``workers``, or for ``"auto"`` the rule
    measured in benchmarks/RESULTS.md §18 — none on the CPU unless cores are left over by
    PyTorch's threads (on 2 cores, two decoding processes next to two compute threads made the
    BSData fit 1.35× slower), up to 4 for a GPU; none for at most two batches either way (starting
    a worker cost ~1.5 s before the first result, more than decoding 32 images inline)."""
    batches = -(-n_images // max(batch_size, 1))
    if workers != "auto":
        return max(0, min(int(workers), batches))
    if batches <= 2:
        return 0
    cores = (os.cpu_count() or 1) if cores is None else cores
    threads = torch.get_num_threads() if threads is None else threads
    spare = cores - 1 if device_type != "cpu" else cores - threads
    return max(0, min(4 if device_type != "cpu" else 2, spare, batches))


def make_loader(sources: Sequence, transform, batch_size: int, workers: int | str, pin_memory: bool,
                value_range: ValueRange | None = None, value_kind: str | None = None,
                keep_original: bool = False, device_type: str = "cpu") -> DataLoader:
    """Batches in input order; file sources use :func:`decoding_workers` processes, in-memory
    ones load inline. Every image is mapped to [0, 1] by ``value_range`` (see
    :class:`ImageDataset`); with ``keep_original`` each batch also carries the decoded images
    (``Batch.originals``)."""
    in_memory = any(not isinstance(s, Path) for s in sources)
    workers = 0 if in_memory else decoding_workers(workers, len(sources), batch_size, device_type)
    return DataLoader(
        ImageDataset(sources, transform, value_range, value_kind, keep_original),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
