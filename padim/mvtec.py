"""Labelled test sets in MVTec AD layout: ``test/good``, ``test/<defect>``, ``ground_truth/<defect>``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .io import IMAGE_EXTENSIONS, ImageReadError, image_size, list_images, read_pixels


@dataclass
class LabelledSet:
    """Test images with their labels (1 = defect), defect types and mask files (None if absent)."""

    root: Path
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)
    mask_paths: list[Path | None] = field(default_factory=list)

    @property
    def has_masks(self) -> bool:
        return any(m is not None for m, y in zip(self.mask_paths, self.labels) if y == 1)

    @property
    def defects_without_mask(self) -> list[Path]:
        """The defect images no mask was found for (pixel metrics leave them out)."""
        return [p for p, m, y in zip(self.paths, self.mask_paths, self.labels) if y == 1 and m is None]


def find_image(folder: Path, names) -> Path | None:
    """The first existing ``folder/NAME.EXT`` for NAME in ``names``, EXT in IMAGE_EXTENSIONS."""
    for name in names:
        for ext in IMAGE_EXTENSIONS:
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def find_mask(root: Path, defect: str, stem: str) -> Path | None:
    """The mask of ``test/<defect>/<stem>.*``: ``ground_truth/<defect>/<stem>_mask.*`` (or ``<stem>.*``)."""
    return find_image(root / "ground_truth" / defect, (f"{stem}_mask", stem))


def read_labelled_set(root: str | Path) -> LabelledSet:
    """Index ``root/test`` (MVTec AD layout); every sub-folder except ``good`` is a defect type."""
    root = Path(root)
    test = root / "test"
    if not test.is_dir():
        raise FileNotFoundError(f"'{root}': expected MVTec AD layout with a 'test' folder (test/good, test/<defect>)")
    result = LabelledSet(root)
    for folder in sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            images = list_images(folder)
        except FileNotFoundError:
            continue
        for path in images:
            defect = folder.name != "good"
            result.paths.append(path)
            result.labels.append(int(defect))
            result.defect_types.append(folder.name)
            result.mask_paths.append(find_mask(root, folder.name, path.stem) if defect else None)
    if not result.paths:
        raise FileNotFoundError(f"'{test}': no test images found")
    return result


def check_both_classes(data: LabelledSet) -> None:
    """A ValueError naming the test folder when it holds only good or only defect images: the
    metrics need both, and finding out after scoring every image wastes the run."""
    n_defects = sum(data.labels)
    if 0 < n_defects < len(data.labels):
        return
    missing = "no defect images (test/<defect>/)" if n_defects == 0 else "no good images (test/good/)"
    raise ValueError(f"'{data.root / 'test'}': {missing}, {len(data.labels) - n_defects} good and {n_defects} "
                     f"defect images; evaluation needs both (to score a folder of one kind, use padim score)")


def load_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask at ``shape`` (all False when ``path`` is None): a pixel is defective where the
    mask's colour is non-zero and, in a mask with alpha, not transparent.

    Read as images are (Pillow, EXIF rotation, any bit depth). Alpha matters: masks drawn in an
    editor are often RGBA, opaque black around the strokes or transparent with any colour under
    it, and the largest channel counted the opaque alpha as a defect everywhere. A mask of another
    size is resized (nearest); one of another aspect ratio is not this image's mask and is refused.
    A JPEG mask is lossy: its compression leaves faint non-zero pixels up to a block (8 px) around
    every stroke, so it counts from half its type's full scale (127 of 255) instead.
    """
    if path is None:
        return np.zeros(shape, dtype=bool)
    mask = read_pixels(path)
    if mask.ndim == 3:
        colour = mask[..., :3].max(axis=2) if mask.shape[2] >= 3 else mask[..., 0]
        mask = np.where(mask[..., 3] > 0, colour, 0) if mask.shape[2] == 4 else colour
    lossy = Path(path).suffix.lower() in (".jpg", ".jpeg")
    floor = (np.iinfo(mask.dtype).max // 2 if np.issubdtype(mask.dtype, np.integer) else 0.5) if lossy else 0
    mask = mask > floor
    if mask.shape != tuple(shape):
        _check_aspect(path, mask.shape, shape)
        (h, w) = shape
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def _check_aspect(path: Path, mask_shape: tuple, shape: tuple) -> None:
    (mh, mw), (h, w) = mask_shape, shape
    if abs(mh * w - mw * h) > 0.02 * mw * h:
        raise ImageReadError(f"'{path}': mask of {mw}×{mh} px for an image of {w}×{h} px "
                             f"(another aspect ratio: not this image's mask?)")


def check_masks(data: LabelledSet) -> None:
    """An ImageReadError for the first mask that cannot be read or is of another aspect ratio than
    its image, from the file headers: before a long evaluation rather than at that image."""
    for path, mask_path in zip(data.paths, data.mask_paths):
        if mask_path is not None:
            _check_aspect(mask_path, image_size(mask_path), image_size(path))
