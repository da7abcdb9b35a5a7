"""The scoring core as one pure ``torch.nn.Module``: image → anomaly map and score.

``ScoringNet`` = :class:`Embedder` (normalisation → backbone truncated after the last hooked
layer → kept channels, coarse maps nearest-upsampled to the finest grid) followed by
:class:`ScoreHead` (Mahalanobis distance to the stored Gaussians — per position, per k×k cell
or one shared — → bilinear map at the input size → Gaussian blur → score = max of the map,
raised for maps raised everywhere by the model's whole-image rule, :mod:`padim.whole_image`).

The estimator scores through these modules (tiled models embed tile by tile with the same
``Embedder``, tiles being images), and :mod:`padim.export` traces the same ``ScoringNet`` to
ONNX — a tiled model's with a :class:`TiledEmbedder`, which cuts, embeds and stitches the tiles
in the graph: one scoring path. No hooks, no exception to stop the forward pass: the backbone is run
stage by stage, as its own ``forward`` does, and simply not beyond the last hooked stage.
"""

from __future__ import annotations

import time

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneSpec
from .features import embedding_concat
from .gaussian import whitener_buffer
from .maps import distance_grid_to_maps
from .tiling import Cell, TileLayout, from_cells, to_cells

POSITION_CHUNK = 1024  # positions per batched product in eager scoring (temporaries stay small)
# glibc's largest dynamic mmap threshold (64-bit): a freed block up to this size is reused by the
# next allocation, a larger one goes back to the kernel and the next costs fresh pages again
REUSED_BLOCK_BYTES = 32 * 2**20


def backbone_stages(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's modules in the order its ``forward`` applies them, by dotted name.

    EfficientNet-Lite: stem conv, BatchNorm, activation, then ``_blocks.0 …``; torchvision's
    ResNet: ``conv1, bn1, relu, maxpool, layer1 … layer4``. Those forwards are plain chains
    (in eval mode drop-connect is the identity), so running these modules one after the other
    gives exactly what the hooks saw. Any other architecture is refused.
    """
    if hasattr(backbone, "_blocks") and hasattr(backbone, "_conv_stem"):
        stem = [(n, getattr(backbone, n)) for n in ("_conv_stem", "_bn0", "_swish")]
        return stem + [(f"_blocks.{i}", block) for i, block in enumerate(backbone._blocks)]
    if all(hasattr(backbone, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1")):
        names = ["conv1", "bn1", "relu", "maxpool"] + [f"layer{i}" for i in range(1, 5) if hasattr(backbone, f"layer{i}")]
        return [(n, getattr(backbone, n)) for n in names]
    raise ValueError(f"cannot run a {type(backbone).__name__} stage by stage: padim knows EfficientNet-Lite "
                     f"and torchvision ResNet backbones")


def local_channel_indices(channels: Sequence[int], channel_index: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Per hooked layer, the indices of its kept channels (None: all), from sorted global ``channel_index``."""
    out, offset = [], 0
    for c in channels:
        if channel_index is None:
            out.append(None)
        else:
            index = channel_index.to(torch.long)
            out.append(index[(index >= offset) & (index < offset + c)] - offset)
        offset += c
    return out


class Embedder(nn.Module):
    """``[B, 3, H, W]`` RGB in [0, 1] → PaDiM embedding ``[B, d, h, w]`` on the finest hooked grid."""

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, layers: Sequence[str],
                 channel_index: torch.Tensor | None = None, channels_last: bool | None = None):
        super().__init__()
        if not layers:
            raise ValueError("at least one layer must be hooked")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct, got {list(layers)}")
        self.points = [spec.hook_point(name) for name in layers]
        stages = backbone_stages(backbone.eval())
        names = [n for n, _ in stages]
        for name in layers:
            if name not in names:
                raise ValueError(f"backbone has no stage named {name!r}")
        last = max(names.index(name) for name in layers)
        self.stage_names = names[: last + 1]
        self.stages = nn.ModuleList(m for _, m in stages[: last + 1])
        self.taps = [self.stage_names.index(p.name) for p in self.points]  # stage index of each layer
        self.largest_per_pixel = 2.0 * spec.peak_activation  # bytes of the largest layer output (float32)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.selections = self.selection_of(self.points, channel_index)
        for k, sel in enumerate(self.selections):
            if sel is not None:
                self.register_buffer(f"keep{k}", torch.tensor(sel, dtype=torch.long), persistent=False)
        # A backbone prepared by padim.fusion runs fastest in channels_last on the CPU (its own
        # forward pre-hook converts the input; here the stages are called directly).
        self.channels_last = bool(getattr(backbone, "_padim_prepared", False)) if channels_last is None else channels_last
        self.backbone = backbone  # kept for its weights' fingerprint; never called whole

    @staticmethod
    def selection_of(points, channel_index: torch.Tensor | None) -> list[list[int] | None]:
        """Kept channels of each hooked layer as lists (None: all)."""
        return [None if s is None else s.tolist()
                for s in local_channel_indices([p.channels for p in points], channel_index)]

    @property
    def out_features(self) -> int:
        return sum(p.channels if s is None else len(s) for p, s in zip(self.points, self.selections))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return embedding_concat(self.feature_maps(images))

    def images_per_pass(self, images: torch.Tensor) -> int:
        """Images one backbone pass takes on the CPU: as many as keep its largest layer output
        within REUSED_BLOCK_BYTES, so that every activation is a block the allocator reuses rather
        than fresh pages. A BSData batch of 16 in one pass spent 4.1 of its embedding's 6.4 s in
        the kernel's page faults (benchmarks/RESULTS.md §41). All at once on a GPU (its caching
        allocator reuses) and when traced (an export's batch is not fixed)."""
        if images.device.type != "cpu" or torch.jit.is_tracing() or images.ndim != 4:
            return max(1, images.shape[0])
        largest = self.largest_per_pixel * images.shape[2] * images.shape[3]
        return max(1, int(REUSED_BLOCK_BYTES // max(1.0, largest)))

    @torch.no_grad()
    def feature_maps(self, images: torch.Tensor, clock: dict | None = None) -> list[torch.Tensor]:
        """The hooked layers' kept channels, each on its own grid (layers with none kept are left out).
        ``clock``: filled with each hooked stage's name → ``time.perf_counter()`` when its output was
        ready (for a batch run in several passes, :meth:`images_per_pass`: the start plus each
        pass's time to it, summed)."""
        step = self.images_per_pass(images)
        if step >= images.shape[0]:
            return self._pass(images, clock)
        started, spent, parts = time.perf_counter(), {}, []
        for part in images.split(step):
            part_clock: dict | None = {} if clock is not None else None
            part_started = time.perf_counter()
            parts.append(self._pass(part, part_clock))
            for name, ready in (part_clock or {}).items():
                spent[name] = spent.get(name, 0.0) + ready - part_started
        if clock is not None:
            clock.update({name: started + seconds for name, seconds in spent.items()})
        return [torch.cat(maps) for maps in zip(*parts)]

    def _pass(self, images: torch.Tensor, clock: dict | None) -> list[torch.Tensor]:
        """One backbone pass over ``images``: :meth:`feature_maps` without the split."""
        x = (images - self.mean) / self.std
        if self.channels_last and x.device.type == "cpu" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        wanted, taps = set(self.taps), {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in wanted:
                taps[i] = x
                if clock is not None:
                    if x.device.type == "cuda":
                        torch.cuda.synchronize(x.device)
                    clock[self.stage_names[i]] = time.perf_counter()
        parts = []
        for k, tap in enumerate(self.taps):
            fmap = taps[tap]
            if self.selections[k] is not None:
                if not self.selections[k]:
                    continue
                fmap = fmap.index_select(1, getattr(self, f"keep{k}"))
            parts.append(fmap)
        return parts


class TiledEmbedder(nn.Module):
    """``[B, 3, H, W]`` → the stitched embedding of :func:`padim.tiling.extract_tiled`, as plain
    tensor operations: pad with ``fill`` (the normalisation mean), run ``embedder`` on each tile of
    ``layout`` in turn (all B images' tile at once), crop each tile's features to its core and
    concatenate the cores. Tracing unrolls the loop, so an export of a tiled model is one graph that
    still holds only one tile's activations at a time; eager scoring uses ``extract_tiled``, which
    also batches tiles across images."""

    def __init__(self, embedder: Embedder, layout: TileLayout, fill):
        super().__init__()
        self.embedder = embedder
        self.layout = layout
        self.register_buffer("fill", torch.as_tensor(fill, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        top, bottom, left, right = lay.padding
        # images − fill is 0 in the padding: after normalisation, the zeros a whole-image pass pads with
        padded = F.pad(images - self.fill, (left, right, top, bottom)) + self.fill
        t, c, m, cc = lay.tile, lay.core, lay.margin_cells, lay.core_cells
        rows = []
        for i in range(lay.tiles_y):
            cores = [self.embedder(padded[:, :, i * c:i * c + t, j * c:j * c + t])[:, :, m:m + cc, m:m + cc]
                     for j in range(lay.tiles_x)]
            rows.append(torch.cat(cores, dim=3))
        gh, gw = lay.grid_size
        return torch.cat(rows, dim=2)[:, :, :gh, :gw]


class ScoreHead(nn.Module):
    """Embedding ``[B, d, h, w]`` → anomaly map ``[B, H, W]`` at the input size.

    ``mean [G, d]`` and ``whitener [G, d, d]`` (dense float32 ``L⁻¹``, lower triangular) of the
    G Gaussians: one per position (``cell=1``), per k×k cell, or one (``cell="image"``). The
    squared distance is ``‖L⁻¹(x − μ)‖²``, one batched product over the Gaussians.
    """

    def __init__(self, mean: torch.Tensor, whitener: torch.Tensor | None, cell: Cell, input_size: tuple[int, int],
                 stride: int, blur_sigma: float, whitener_rows=None):
        super().__init__()
        if whitener is None and whitener_rows is None:
            raise ValueError("ScoreHead needs a whitener or a whitener_rows(start, stop, out) function")
        self.register_buffer("mean", mean)  # persistent: exported as initialisers
        self.register_buffer("whitener", whitener)
        # Large models score without a dense float32 whitener in memory: each chunk of positions
        # is unpacked from the packed storage when it is needed (eager scoring only, not export).
        self.whitener_rows = whitener_rows if whitener is None else None
        self.cell = cell
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.stride = int(stride)
        self.blur_sigma = float(blur_sigma)

    def distances(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples ``[S, d, G]`` → Mahalanobis distances ``[S, G]``."""
        x = gaussians_first(samples)
        g = x.shape[0]
        if self.whitener is not None and (torch.jit.is_tracing() or g <= POSITION_CHUNK):
            return _whitened_norm(x, self.mean, self.whitener).T
        rows = self.whitener_rows or (lambda start, stop, out: self.whitener[start:stop])
        # unpacked chunks go into one block reused by every chunk of this call (fresh ones cost
        # fresh pages, RESULTS.md §40); a dense whitener's rows are views
        block = whitener_buffer(min(POSITION_CHUNK, g), x.shape[2], x.device) if self.whitener is None else None
        out = torch.empty(samples.shape[0], g, dtype=torch.float32, device=samples.device)
        for start in range(0, g, POSITION_CHUNK):
            stop = min(start + POSITION_CHUNK, g)
            out[:, start:stop] = _whitened_norm(x[start:stop], self.mean[start:stop], rows(start, stop, block)).T
        return out

    def to_maps(self, distances: torch.Tensor, batch: int, h: int, w: int) -> torch.Tensor:
        """Distances ``[S, G]`` of a ``[batch, d, h, w]`` embedding → blurred maps ``[batch, H, W]``."""
        return distances_to_maps(distances, self.cell, batch, h, w, self.input_size, self.stride, self.blur_sigma)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        batch, _, h, w = embedding.shape
        return self.to_maps(self.distances(to_cells(embedding, self.cell)), batch, h, w)


def distances_to_maps(distances: torch.Tensor, cell: Cell, batch: int, h: int, w: int, input_size: tuple[int, int],
                      stride: int, blur_sigma: float) -> torch.Tensor:
    """Per-sample distances ``[S, G]`` (cells as :func:`padim.tiling.to_cells`) of a ``[batch, d, h, w]``
    embedding → anomaly maps ``[batch, H, W]`` at the input size: grid, bilinear upsampling, blur."""
    grid = from_cells(distances, cell, batch, h, w)
    return distance_grid_to_maps(grid, input_size, blur_sigma, stride)


def gaussians_first(samples: torch.Tensor) -> torch.Tensor:
    """Samples ``[S, d, G]`` → ``[G, S, d]`` float32 whose feature axis is contiguous: the
    permuted view where it already is (a channels_last embedding's), else one 2-D transposing
    copy. A batched product over the Gaussians runs several times slower on matrices strided
    along d (a dense head scores contiguous embeddings 1.7–2.1× faster so, the low-rank trial's
    scoring 2.9×, RESULTS.md §27)."""
    view = samples.permute(2, 0, 1)
    if view.stride(-1) == 1:
        return view.to(torch.float32)
    count, d, gaussians = samples.shape
    transposed = samples.reshape(count * d, gaussians).T.clone(memory_format=torch.contiguous_format)
    return transposed.to(torch.float32).view(gaussians, count, d)


def _whitened_norm(samples: torch.Tensor, mean: torch.Tensor, whitener: torch.Tensor) -> torch.Tensor:
    """``[G, S, d]`` samples → ``‖L⁻¹(x − μ)‖`` ``[G, S]`` against ``mean [G, d]``, ``whitener [G, d, d]``."""
    centred = samples - mean[:, None, :]
    whitened = torch.bmm(centred, whitener.transpose(1, 2))
    return whitened.square().sum(dim=2).clamp_min(0).sqrt()


def image_scores(maps: torch.Tensor, rule=None) -> torch.Tensor:
    """Image scores ``[N]`` of maps ``[N, H, W]``: each map's maximum, raised by a
    :class:`padim.whole_image.WholeImageRule` where the map's mean reaches its gate (the numpy
    side is ``WholeImageRule.apply``). Plain tensor operations, so the export traces them."""
    flat = maps.flatten(1)
    maxima = flat.amax(dim=1)
    if rule is None:
        return maxima
    means = flat.mean(dim=1)
    raised = torch.maximum(maxima, rule.base + rule.slope * (means - rule.gate))
    return torch.where(means >= rule.gate, raised, maxima)


class ScoringNet(nn.Module):
    """Image batch ``[N, 3, H, W]`` (RGB in [0, 1], the model's input size) → ``(anomaly_map [N, H, W],
    score [N])``; the score is the maximum of the map, raised by ``rule`` (a
    :class:`padim.whole_image.WholeImageRule`, or None) where the whole map is."""

    def __init__(self, embedder: Embedder, head: ScoreHead, rule=None):
        super().__init__()
        self.embedder = embedder
        self.head = head
        self.rule = rule

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.head(self.embedder(image))
        return maps, image_scores(maps, self.rule)
