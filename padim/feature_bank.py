"""One backbone pass shared by several candidate models (padim.autoconfig).

Candidates that differ only in hook points, channels (d), Gaussian granularity or ε, at the same
backbone, weights and input size, see the same layer outputs: a :class:`FeatureBank` runs the
backbone once over the selection's images, hooking the union of their layers, and keeps each
layer's output (float16, on its own grid, a few hundred kB per image at 256 px). Each candidate's
embedding is then assembled from it exactly as its own extractor would (``embedding_concat`` of its
layers and channels), so it is fitted and scored without a backbone pass of its own.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

from .backbones import build_backbone
from .features import embedding_concat
from .net import Embedder, backbone_stages

BANK_MAX_BYTES = 768 * 2**20  # larger banks (huge or tiled inputs) are not built: each candidate extracts its own


def bank_key(model) -> tuple | None:
    """What a model's features depend on besides its hook points (after ``_prepare_fit``);
    None when a bank cannot serve it (a tiled geometry: its features come tile by tile)."""
    if model.geometry_.tiled:
        return None
    return (model.backbone, None if model.weights is None else str(model.weights), tuple(model.input_size_))


def bank_bytes(model, layers, n_images: int) -> int:
    """Bytes of a bank of ``layers`` at ``model``'s input size for ``n_images`` images."""
    h, w = model.input_size_
    per_image = 0
    for name in layers:
        point = model.spec.hook_point(name)
        per_image += point.channels * (-(-h // point.stride)) * (-(-w // point.stride))
    return 2 * per_image * n_images


class FeatureBank:
    """Every hooked layer's output for ``sources`` at ``reference``'s input size (``reference``:
    a PaDiM after ``_prepare_fit`` and its value-range decision, whose loader reads the images),
    and the seconds the pass took (``seconds``). Unreadable images are left out (``indices``: the
    sources that are in, in order)."""

    def __init__(self, reference, layers, sources, backbone: torch.nn.Module | None = None):
        self.key = bank_key(reference)
        if self.key is None:
            raise ValueError("a feature bank cannot hold a tiled model's features")
        self.backbone = backbone if backbone is not None else build_backbone(reference.backbone, reference.weights)
        order = {name: i for i, (name, _) in enumerate(backbone_stages(self.backbone))}
        self.layers = sorted(set(layers), key=order.__getitem__)
        embedder = Embedder(self.backbone, reference.spec, self.layers).to(reference._device())
        parts: list[list[torch.Tensor]] = [[] for _ in self.layers]
        self.indices: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self._to_layer = dict.fromkeys(self.layers, 0.0)  # backbone seconds from a batch's start to each layer
        started = time.perf_counter()
        warm_up_s = 0.0
        for batch in reference._loader(sources, reference.input_size_) if sources else ():
            if not batch.indices:
                continue
            reference._check_sizes(batch)
            if not self.indices:  # see warm_up_s below
                t0 = time.perf_counter()
                embedder.feature_maps(batch.images[:1].to(reference._device()))
                warm_up_s = time.perf_counter() - t0
            clock: dict = {}
            batch_started = time.perf_counter()
            fmaps = embedder.feature_maps(batch.images.to(reference._device()), clock)
            for name, ready in clock.items():
                self._to_layer[name] += ready - batch_started
            # float16 as the fit's sums take them, unless a layer's values exceed its range
            for store, fmap in zip(parts, fmaps):
                half = fmap.half()
                store.append(half if bool(torch.isfinite(half).all()) else fmap)
            self.indices.extend(batch.indices)
            self.sizes.extend(batch.original_sizes)
        # the backbone pass, reading the images included; not a first forward's one-off costs (code
        # paged in, kernels set up: 0.02-0.03 s on the dev machine, more from a slow disk), which no
        # later fit pays again and which, counted per image, would scale the budget's unit
        self.seconds = time.perf_counter() - started - warm_up_s
        self.maps = {name: _joined(store) for name, store in zip(self.layers, parts)}
        self._row = {source: row for row, source in enumerate(self.indices)}

    def seconds_for(self, layers) -> float:
        """The pass's seconds as a model hooking only ``layers`` would have spent them: reading the
        images, and the backbone up to the deepest of them (not the union's deeper stages)."""
        deepest = max(self._to_layer.values(), default=0.0)
        return self.seconds - deepest + max((self._to_layer[name] for name in layers), default=deepest)

    def embeddings(self, model, sources, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """``(source indices, embedding [b, d, h, w])`` of ``sources`` (indices into the bank's
        sources; unreadable ones are skipped) as ``model``'s extractor makes them."""
        rows = [(s, self._row[s]) for s in sources if s in self._row]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            index = torch.tensor([row for _, row in chunk])
            # assembled in float32 (CPUs are slow at float16 arithmetic) and channels_last, as the
            # extractor's fused backbone gives them on the CPU (the Gaussians read that without a copy)
            maps = [self.maps[name].index_select(0, index).to(torch.float32, memory_format=torch.channels_last)
                    for name in model.layers_]
            yield [s for s, _ in chunk], embedding_concat(maps, model.channel_index_)


def _joined(batches: list[torch.Tensor]) -> torch.Tensor | None:
    """One tensor of a layer's batches: float16, or float32 if any batch had to stay so."""
    if not batches:
        return None
    dtype = torch.float32 if any(b.dtype != torch.float16 for b in batches) else torch.float16
    return torch.cat([b.to(dtype) for b in batches])
