"""Inference-time rewrites of a backbone that keep its module names and its outputs.

``prepare_for_inference`` makes an eval-mode backbone cheaper to run; what its hook points
(``_blocks.N``, ``layerN``, …) return is unchanged up to float rounding (relative differences of
a few 1e-6 in float32, from the changed summation order). What it does:

1. **BatchNorm folding.** Every BatchNorm2d that directly follows a Conv2d is folded into that
   convolution (weights and bias, computed in float64) and replaced by ``nn.Identity`` under
   the same name. Only pairs whose data flow is known are folded: the (conv, bn) attribute pairs
   of the exact module classes whose ``forward`` was read for this (EfficientNet-Lite's stem,
   head and ``MBConvBlock``; torchvision's ``ResNet`` stem, ``BasicBlock`` and ``Bottleneck``),
   and a Conv2d directly followed by a BatchNorm2d inside an ``nn.Sequential`` (ResNet's
   ``downsample``). In each, the BatchNorm's input is exactly that convolution's output and
   nothing else uses that output. Subclasses (which may wire ``forward`` differently) and any
   other BatchNorm are left alone.
2. **No padding copies** (EfficientNet-Lite). The package's ``Conv2dStaticSamePadding`` pads
   with an ``nn.ZeroPad2d`` copy, then convolves with ``padding=0``. Symmetric padding
   (stride-1 convolutions, odd kernels) becomes the convolution's own ``padding`` on every
   device. Asymmetric padding (stride 2: TensorFlow "SAME" pads one more on the right/bottom)
   is done on the CPU by a convolution with symmetric padding ``max(l, r)`` and ``|r − l|``
   zero taps added on the short side of the kernel — the same sums, for any input size, without
   the copy (4×4 instead of 3×3 taps, 6×6 instead of 5×5, on 5 of the 49 convolutions); on other
   devices the copy is kept (not measured there).
3. **Fused ReLU6** (EfficientNet-Lite). The convolutions followed by the block's ReLU6 apply it
   themselves: on the CPU with oneDNN's fused convolution + hardtanh
   (``torch.ops.mkldnn._convolution_pointwise``, the op that ``torch.compile`` uses; checked
   against ``F.conv2d`` once per process and not used if missing or different), elsewhere with
   an in-place ``hardtanh_`` on the fresh convolution output. The block's ``_swish`` then becomes
   ``nn.Identity`` (the name stays). A hook on such a convolution now sees the activated output.
4. **channels_last on the CPU.** A forward pre-hook converts a 4-d CPU input to
   ``torch.channels_last``; oneDNN's convolutions (depthwise above all) run much faster in that
   layout and every later activation stays in it. Weights are not converted and other devices
   get their input unchanged. Consequence: on the CPU the hooked outputs are channels_last
   tensors (``is_contiguous()`` is False) with the same shape and values; ``F.interpolate``,
   ``index_select``, ``torch.cat``, ``flatten``/``reshape``/``permute`` accept them.

A prepared model is for inference only (its BatchNorms are gone), so a model with any module in
training mode is refused with ``ValueError`` rather than silently changed.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["prepare_for_inference", "conv_bn_pairs", "fold_batch_norms"]

_PREPARED = "_padim_prepared"


# ------------------------------------------------------------------ which (conv, bn) pairs
try:
    from efficientnet_lite_pytorch import model as _lite_model
    from efficientnet_lite_pytorch import utils as _lite_utils
except ImportError:  # the package is optional for the torchvision backbones
    _lite_model = _lite_utils = None


def _known_pair_attrs() -> list[tuple[type, tuple[tuple[str, str], ...]]]:
    """(module class, (conv attribute, bn attribute) pairs its forward applies back to back)."""
    known: list[tuple[type, tuple[tuple[str, str], ...]]] = []
    lite = _lite_model
    if lite is not None:
        # EfficientNet.extract_features: self._swish(self._bn0(self._conv_stem(inputs))) and
        # self._swish(self._bn1(self._conv_head(x))); MBConvBlock.forward: _expand_conv → _bn0
        # (when expand_ratio != 1), _depthwise_conv → _bn1, _project_conv → _bn2.
        known.append((lite.EfficientNet, (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))))
        known.append((lite.MBConvBlock, (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                                         ("_project_conv", "_bn2"))))
    # A torchvision ResNet can only exist once torchvision.models.resnet has been imported, so the
    # module is looked up rather than imported: importing torchvision costs ~1.6 s of every fit.
    tv = sys.modules.get("torchvision.models.resnet")
    if tv is not None:
        # ResNet._forward_impl: relu(bn1(conv1(x))); BasicBlock: bn1(conv1), bn2(conv2);
        # Bottleneck: also bn3(conv3). (wide_resnet50_2 is a ResNet of Bottlenecks.)
        known.append((tv.ResNet, (("conv1", "bn1"),)))
        known.append((tv.BasicBlock, (("conv1", "bn1"), ("conv2", "bn2"))))
        known.append((tv.Bottleneck, (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))))
    return known


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def conv_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """``(parent, conv attribute, bn attribute)`` for every pair that can be folded safely."""
    known = _known_pair_attrs()
    for module in model.modules():
        for cls, pairs in known:
            if type(module) is cls:  # exact class: a subclass may wire its forward differently
                for conv_name, bn_name in pairs:
                    if _foldable(module._modules.get(conv_name), module._modules.get(bn_name)):
                        yield module, conv_name, bn_name
        if type(module) is nn.Sequential:  # data flows from each child to the next, and only there
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                if _foldable(module._modules[first], module._modules[second]):
                    yield module, first, second


# ------------------------------------------------------------------ 1. BatchNorm folding
@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` into ``conv``: new Parameters, the old tensors are left as they were."""
    weight = conv.weight.detach()
    scale = (bn.running_var.detach().double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double()
    if conv.bias is not None:
        shift = shift + conv.bias.detach().double()
    shift = shift * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    folded = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    requires_grad = conv.weight.requires_grad
    conv.weight = nn.Parameter(folded.to(weight.dtype), requires_grad=requires_grad)
    conv.bias = nn.Parameter(shift.to(weight.dtype), requires_grad=requires_grad)


def fold_batch_norms(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every safe (conv, bn) pair of an eval-mode model in place; returns their names."""
    _require_eval(model)
    names = {id(m): n for n, m in model.named_modules()}
    done = []
    for parent, conv_name, bn_name in list(conv_bn_pairs(model)):
        _fold(parent._modules[conv_name], parent._modules[bn_name])
        parent._modules[bn_name] = nn.Identity()
        prefix = names[id(parent)]
        done.append((_join(prefix, conv_name), _join(prefix, bn_name)))
    return done


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ------------------------------------------------------------------ 3. fused ReLU6 on the CPU
_POINTWISE_OK: bool | None = None


def _pointwise_conv_works() -> bool:
    """Whether oneDNN's fused conv + hardtanh exists here and matches F.conv2d + clamp."""
    global _POINTWISE_OK
    if _POINTWISE_OK is None:
        try:
            op = torch.ops.mkldnn._convolution_pointwise
            gen = torch.Generator().manual_seed(0)
            ok = True
            for groups, k, stride, pad, cl in ((1, 1, 1, 0, True), (6, 3, 2, 1, True), (6, 4, 1, 2, False)):
                x = torch.randn(2, 6, 9, 8, generator=gen) * 3
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                w = torch.randn(6, 6 // groups, k, k, generator=gen)
                b = torch.randn(6, generator=gen)
                want = F.conv2d(x, w, b, stride, pad, 1, groups).clamp(0.0, 6.0)
                got = op(x, w, b, [pad, pad], [stride, stride], [1, 1], groups, "hardtanh", [0.0, 6.0], "")
                ok = ok and got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-4)
            _POINTWISE_OK = bool(ok and torch.backends.mkldnn.is_available())
        except Exception:  # noqa: BLE001 - missing op, no oneDNN, changed signature: plain path
            _POINTWISE_OK = False
    return _POINTWISE_OK


def _conv_relu6(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, padding) -> torch.Tensor:
    bias = conv.bias
    if (x.device.type == "cpu" and _POINTWISE_OK and torch.backends.mkldnn.enabled
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, list(padding), list(conv.stride), list(conv.dilation), conv.groups,
            "hardtanh", [0.0, 6.0], "")
    y = F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)
    return F.hardtanh_(y, 0.0, 6.0)  # fresh tensor: in place is safe


# ------------------------------------------------------------------ 2. padding, + 3. activation
if _lite_utils is not None:

    class PreparedSamePadConv2d(_lite_utils.Conv2dStaticSamePadding):
        """``Conv2dStaticSamePadding`` after ``prepare_for_inference``: same parameters and
        children, no padding copy on the CPU, optionally a fused ReLU6 (module docstring)."""

        relu6: bool = False
        cpu_padding: tuple[int, int] | None = None  # for asymmetric padding, with cpu_taps
        cpu_taps: tuple[int, int, int, int] = (0, 0, 0, 0)  # zero taps (left, right, top, bottom)

        def forward(self, x):
            weight, padding = self.weight, self.padding
            if self.cpu_padding is not None and x.device.type == "cpu":
                weight, padding = F.pad(weight, self.cpu_taps), self.cpu_padding
            else:
                x = self.static_padding(x)
            if self.relu6:
                return _conv_relu6(self, x, weight, padding)
            return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)

else:  # pragma: no cover - the package is a dependency of the default backbone
    PreparedSamePadConv2d = None


def _rewrite_same_padding(model: nn.Module) -> int:
    """Step 2 on every ``Conv2dStaticSamePadding`` of the model; returns how many changed."""
    cls = PreparedSamePadConv2d
    if cls is None:
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is not _lite_utils.Conv2dStaticSamePadding:
            continue
        # The class changes, the object (parameters, children, hooks) stays: names cannot move.
        module.__class__ = cls
        pad = module._modules.get("static_padding")
        if type(pad) is not nn.ZeroPad2d or tuple(module.padding) != (0, 0) or module.padding_mode != "zeros":
            continue
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            # ZeroPad2d(p) then conv(padding=0) == conv(padding=p), for any input size and stride.
            module.padding = (top, left)
            module._reversed_padding_repeated_twice = [left, left, top, top]
            module._modules["static_padding"] = nn.Identity()
        elif tuple(module.dilation) == (1, 1):
            # Output j reads input s·j − left + d, d < k. With symmetric padding max(left, right)
            # and |right − left| zero taps before (or after) the kernel it reads the same
            # positions (plus zero-weighted ones), and yields as many outputs. Undilated only.
            module.cpu_padding = (max(top, bottom), max(left, right))
            module.cpu_taps = (max(right - left, 0), max(left - right, 0),
                               max(bottom - top, 0), max(top - bottom, 0))
        changed += 1
    return changed


def _fuse_relu6(model: nn.Module) -> int:
    """Step 3: the convolutions whose (folded) output goes straight into ReLU6 apply it."""
    lite, cls = _lite_model, PreparedSamePadConv2d
    if lite is None or cls is None:
        return 0
    fused = 0
    for module in model.modules():
        if type(module) is lite.MBConvBlock:
            if getattr(module, "has_se", True):  # the squeeze-excitation path also uses _swish
                continue
            pairs = [("_depthwise_conv", "_bn1")]
            if "_expand_conv" in module._modules:
                pairs.insert(0, ("_expand_conv", "_bn0"))
        elif type(module) is lite.EfficientNet:
            pairs = [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
        else:
            continue
        # Every use of _swish must follow one of these convolutions with its BatchNorm folded.
        if type(module._modules.get("_swish")) is not nn.ReLU6 or not all(
            type(module._modules.get(conv)) is cls and type(module._modules.get(bn)) is nn.Identity
            for conv, bn in pairs
        ):
            continue
        for conv, _ in pairs:
            module._modules[conv].relu6 = True
        module._modules["_swish"] = nn.Identity()
        fused += len(pairs)
    return fused


# ------------------------------------------------------------------ 4. channels_last on the CPU
class _ChannelsLastOnCPU:
    """Forward pre-hook: a 4-d CPU input goes channels_last (module-level class: picklable)."""

    def __call__(self, module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4 and args[0].device.type == "cpu":
            return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])
        return None


# ------------------------------------------------------------------ state dict as built
class _OriginalStateDict:
    """state_dict post-hook: report the tensors the model was built from, not the folded ones.

    ``state_dict()`` of a prepared model then equals that of the model before preparation (same
    keys, order and values), so weight fingerprints and saved state dicts do not change. Only the
    tensors that folding replaced are kept (where they were, normally the CPU); the others are
    read from the live model. A module-level class rather than a closure: the model still pickles.
    """

    def __init__(self, order: list[str], replaced: dict[str, torch.Tensor], added: set[str]):
        self.order = order
        self.replaced = replaced
        self.added = added

    def __call__(self, module, state_dict, prefix, local_metadata) -> None:
        live = OrderedDict((k[len(prefix):], state_dict.pop(k)) for k in list(state_dict) if k.startswith(prefix))
        for key in self.order:
            value = live.pop(key, None)
            if key in self.replaced:
                state_dict[prefix + key] = self.replaced[key]
            elif value is not None:
                state_dict[prefix + key] = value
        for key, value in live.items():  # anything the model gained since (nothing normally)
            if key not in self.added:
                state_dict[prefix + key] = value


# ------------------------------------------------------------------ entry point
def _require_eval(model: nn.Module) -> None:
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            "prepare_for_inference folds BatchNorm into convolutions and is for eval-mode models only; "
            f"call model.eval() first ({len(training)} module(s) in training mode, e.g. {training[0]!r})"
        )


def prepare_for_inference(model: nn.Module, *, keep_state_dict: bool = False,
                          cpu_channels_last: bool = True) -> nn.Module:
    """Make an eval-mode backbone faster, in place, keeping its module names and hooked outputs.

    See the module docstring for the four rewrites. Raises ``ValueError`` if any module is in
    training mode. A second call on a prepared model does nothing.

    ``keep_state_dict``: ``state_dict()`` keeps returning the weights as they were before
    folding (same keys, order and values; the replaced tensors are kept aside), so a weights
    fingerprint or a saved state dict does not depend on whether the model was prepared.
    Loading weights into a prepared model is not supported (its BatchNorms are gone): load them
    before preparing. ``cpu_channels_last``: run CPU inputs in channels_last (step 4).

    Returns ``model`` itself.
    """
    if getattr(model, _PREPARED, False):
        return model
    _require_eval(model)
    before = model.state_dict() if keep_state_dict else None
    folded = fold_batch_norms(model)
    _rewrite_same_padding(model)
    _pointwise_conv_works()
    _fuse_relu6(model)
    if cpu_channels_last:
        model.register_forward_pre_hook(_ChannelsLastOnCPU())
    if keep_state_dict and folded:
        after = model.state_dict()
        # state_dict() returns detached tensors, so compare storage rather than identity.
        replaced = {k: v for k, v in before.items()
                    if k not in after or after[k].data_ptr() != v.data_ptr() or after[k].shape != v.shape}
        model.register_state_dict_post_hook(_OriginalStateDict(list(before), replaced, set(after) - set(before)))
    setattr(model, _PREPARED, True)
    return model
