"""Patch features: forward hooks on a backbone and the multi-layer PaDiM embedding."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneSpec


class _StopForward(Exception):
    """Raised by the last hook so the backbone does not run layers nobody uses."""


class FeatureExtractor(nn.Module):
    """Runs a backbone up to its last hooked layer and returns the hooked outputs in order.

    Input is a float batch ``[B, 3, H, W]`` in [0, 1]; normalisation happens here so callers
    need not know each backbone's statistics.
    """

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, layers: Sequence[str]):
        super().__init__()
        if not layers:
            raise ValueError("at least one layer must be hooked")
        self.backbone = backbone.eval()
        self.points = [spec.hook_point(name) for name in layers]
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        modules = dict(backbone.named_modules())
        self._outputs: dict[str, torch.Tensor] = {}
        self._running = False
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct, got {list(layers)}")
        for name in layers:
            if name not in modules:
                raise ValueError(f"backbone has no module named {name!r}")
        self._handles = [modules[name].register_forward_hook(self._make_hook(name)) for name in layers]

    def remove_hooks(self) -> None:
        """Detach this extractor's hooks from the backbone."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _make_hook(self, name: str):
        # Once every hooked layer has fired, whatever order they were listed in, stop the pass.
        # Hooks only act during this extractor's own forward: the backbone may be shared with
        # another extractor (or called directly), whose pass this one must not cut short.
        def hook(_module, _inputs, output):
            if not self._running:
                return
            self._outputs[name] = output
            if len(self._outputs) == len(self.points):
                raise _StopForward

        return hook

    @property
    def channels(self) -> list[int]:
        return [p.channels for p in self.points]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        self._outputs = {}
        x = (images - self.mean) / self.std
        self._running = True
        try:
            self.backbone(x)
        except _StopForward:
            pass
        finally:
            self._running = False
        outputs, self._outputs = self._outputs, {}
        missing = [p.name for p in self.points if p.name not in outputs]
        if missing:
            raise RuntimeError(f"hooked layers never ran: {missing}")
        return [outputs[p.name] for p in self.points]


def embedding_concat(feature_maps: Sequence[torch.Tensor], channel_index: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate feature maps on the finest grid: ``[B, d, h, w]``.

    Coarser maps are nearest-upsampled, which copies each coarse value onto the s×s fine cells
    under it — the same as the original unfold/fold ``embedding_concat``, without its memory
    blow-up. ``channel_index`` (sorted indices into the concatenated channels) selects the kept
    channels before upsampling, so dropped channels cost nothing.
    """
    h, w = feature_maps[0].shape[-2:]
    parts = []
    offset = 0
    for fmap in feature_maps:
        c = fmap.shape[1]
        if channel_index is not None:
            local = channel_index[(channel_index >= offset) & (channel_index < offset + c)] - offset
            fmap = fmap.index_select(1, local.to(fmap.device))
        offset += c
        if fmap.shape[1] > 0:
            parts.append(fmap)
    if torch.jit.is_tracing():  # export: the plain operators
        return torch.cat([p if p.shape[-2:] == (h, w) else F.interpolate(p, size=(int(h), int(w)), mode="nearest")
                          for p in parts], dim=1)
    return _upsampled_into(parts, int(h), int(w))


def _upsampled_into(parts: Sequence[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """Each part nearest-upsampled to ``h × w`` straight into its channels of one output (in the
    first part's memory format, as ``torch.cat`` keeps it: channels_last from the CPU's fused
    backbone, which the Gaussians' batched products then read without a copy): a map whose grid
    divides the finest one is copied as a broadcast view (each value onto its s×s cells), one
    copy instead of interpolating and concatenating (RESULTS.md §27: a third less time for a
    feature bank's contiguous rows, the same for channels_last)."""
    first = parts[0]
    dtype = first.dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    channels_last = first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    batch = first.shape[0]
    out = torch.empty(batch, sum(p.shape[1] for p in parts), h, w, dtype=dtype, device=first.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    offset = 0
    for part in parts:
        c, ph, pw = part.shape[1:]
        target = out[:, offset:offset + c]
        if h % ph == 0 and w % pw == 0:
            fy, fx = h // ph, w // pw
            target.view(batch, c, ph, fy, pw, fx).copy_(part[:, :, :, None, :, None].expand(batch, c, ph, fy, pw, fx))
        else:  # a grid that does not divide (e.g. an odd size's rounding): the interpolation's own indices
            target.copy_(F.interpolate(part, size=(h, w), mode="nearest"))
        offset += c
    return out


def random_channel_index(total: int, d: int | None, seed: int) -> torch.Tensor | None:
    """Sorted random subset of ``d`` of ``total`` channels (None keeps all), reproducible by seed."""
    if d is None or d >= total:
        return None
    if d < 1:
        raise ValueError(f"d must be at least 1, got {d}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=generator)[:d].sort().values
