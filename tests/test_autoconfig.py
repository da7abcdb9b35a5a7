"""padim.autoconfig: budget parsing and enforcement, the choice on a constructed case, and that the
stored choice and candidate table reload with the model."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from padim import PaDiM
from padim.image_result import ImageResult
from padim.autoconfig import candidates, format_table, parse_budget

SIZE = 64
COMMON = dict(image_size=SIZE, d=24, device="cpu", workers=0, batch_size=8, calibration_folds=3, seed=0)
# the tests that try every candidate use a large budget on purpose (its warning is tested on its own)
pytestmark = pytest.mark.filterwarnings("ignore:budget 1000x without real defect images")


def shifted_texture_folder(root, n=16, seed=0, size=SIZE, cells=12):
    """Good images: one random texture of ``cells``² cells per period, shifted at random in each
    image (unaligned: position-wise Gaussians see a different part of it everywhere, one shared
    Gaussian sees the same texture)."""
    rng = np.random.default_rng(seed)
    period = size * 3 // 4
    tile = cv2.resize(rng.uniform(0, 1, size=(cells, cells, 3)).astype(np.float32), (period, period),
                      interpolation=cv2.INTER_CUBIC)
    texture = np.tile(np.clip(tile, 0, 1), (4, 4, 1))  # periodic, 3 × size square
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y, x = rng.integers(0, 2 * period, size=2)
        image = (texture[y:y + size, x:x + size] * 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("text, expected", [("4x", ("factor", 4.0)), ("2.5X", ("factor", 2.5)),
                                            ("90", ("seconds", 90.0)), (30, ("seconds", 30.0))])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["fast", "0x", "-3", ""])
def test_parse_budget_refuses_nonsense(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def test_candidates_start_with_the_default_and_cover_what_the_issue_lists(monkeypatch):
    """Hook points, granularity (shared, cells), resolution, ε, d, the other offline backbones."""
    import padim.autoconfig as auto

    lite = candidates("efficientnet_lite0", 256)
    params = {c.name: c.params for c in lite}
    assert lite[0].name == "default" and lite[0].params == {}
    assert {"deep", "shallow", "shared", "cells", "larger", "eps=0.01", "eps=1", "d=88"} <= set(params)
    assert params["larger"] == {"image_size": 384} and params["d=88"] == {"d": 88}
    names = [c.name for c in lite]
    assert params["1.25x"] == {"image_size": 320} and names.index("1.25x") == names.index("larger") + 1
    assert params["eps=0.01"]["eps"] < 0.1 < params["eps=1"]["eps"]
    assert params["lite1"]["backbone"] == "efficientnet_lite1"  # the lite12 extra is installed for the tests
    assert "larger" not in {c.name for c in candidates("efficientnet_lite0", (200, 300))}  # an explicit size stays
    resnet = {c.name: c.params for c in candidates("resnet18", 256)}
    assert resnet["d=448"] == {"d": 0}  # ResNet18 keeps 100 of 448 channels by default: try them all
    assert not any(p.get("backbone") for p in resnet.values())  # the Lite models are offered for Lite only
    monkeypatch.setattr(auto, "weights_installed", lambda backbone: False)
    assert not any(c.params.get("backbone") for c in candidates("efficientnet_lite0", 256))


@pytest.fixture(scope="module")
def auto_model(tmp_path_factory):
    train = shifted_texture_folder(tmp_path_factory.mktemp("texture") / "good")
    return train, PaDiM(config="auto", budget="1000x", **COMMON).fit(train)


def test_the_real_fit_applies_the_chosen_parameters_and_calibrates(auto_model):
    _, model = auto_model
    table = {row["name"]: row for row in model.auto_table_}
    # a generous budget: everything ran but what changes the image_size and d that COMMON sets
    kept = {name for name, row in table.items() if row["skipped"]}
    assert kept == {"larger", "1.25x", "d=88"}
    assert all(table[name]["skipped"].startswith("you set ") for name in kept)
    assert [row["name"] for row in model.auto_table_][-3:] == ["larger", "1.25x", "d=88"]
    ranked = sorted((row for row in model.auto_table_ if row["selection"] is not None), key=lambda row: -row["selection"])
    best = next(row for row in ranked if not row.get("note"))  # the best one no rule passed over
    assert model.auto_choice_ == best["name"]
    assert all(row["note"].startswith("not chosen") for row in ranked[:ranked.index(best)])
    for key, value in best["params"].items():
        assert getattr(model, key) == value  # the chosen parameters were applied
    assert model.calibrator_ is not None  # and the final fit calibrated as usual


class PixelModel:
    """A stand-in candidate: per-pixel mean of the (resized) training images; its map is the
    distance to that mean, or, with ``blind``, noise that ignores the image."""

    def __init__(self, blind=False, **_):
        self.blind = blind

    def fit(self, sources, calibrate=None):
        images = [np.asarray(Image.open(s).convert("RGB"), np.float32) / 255 for s in sources]
        self.mean = np.mean(images, axis=0)
        return self

    _fit_plain = fit  # what the selection calls: a candidate fits as given

    def iter_results(self, images, maps=True):
        rng = np.random.default_rng(0)
        for i, image in enumerate(images):
            x = image.astype(np.float32) / 255
            amap = (rng.uniform(size=x.shape[:2]) if self.blind else np.abs(x - self.mean).sum(-1)).astype(np.float32)
            yield ImageResult(index=i, score=float(amap.max()), anomaly_map=amap)


def test_selection_picks_the_candidate_that_sees_the_synthetic_defects(tmp_path, monkeypatch):
    """Aligned images (one fixed pattern plus faint noise): the pixel model finds every synthetic
    defect, the blind one none; the selection must rank them so, whatever the order."""
    import padim.autoconfig as auto

    rng = np.random.default_rng(0)
    pattern = cv2.resize(rng.uniform(0.2, 0.8, size=(8, 8, 3)).astype(np.float32), (SIZE, SIZE))
    paths = []
    for i in range(16):
        image = np.clip(pattern + rng.normal(0, 0.01, size=pattern.shape), 0, 1)
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
    monkeypatch.setattr(auto, "candidates", lambda backbone, size: [
        auto.Candidate("default", {"blind": True}), auto.Candidate("sighted", {"blind": False})])
    chosen = auto.select(lambda **params: PixelModel(**params), paths, "any", SIZE, budget="1000x")
    rows = {row.name: row for row in chosen.table}
    assert chosen.choice == "sighted"
    assert rows["sighted"].image_auroc > 0.9 and rows["sighted"].pixel_auroc > 0.9
    assert rows["default"].pixel_auroc < 0.7


def test_stored_choice_and_table_reload(auto_model, tmp_path):
    train, model = auto_model
    path = model.save(tmp_path / "auto.padim")
    loaded = PaDiM.load(path, device="cpu", workers=0)
    assert loaded.auto_choice_ == model.auto_choice_
    assert loaded.auto_table_ == model.auto_table_
    images = sorted(train.iterdir())[:4]
    np.testing.assert_array_equal(loaded.score_samples(images), model.score_samples(images))
    assert model.auto_choice_ in format_table(loaded.auto_table_, loaded.auto_choice_)


def test_how_long_the_later_trials_take_changes_no_decision(tmp_path, monkeypatch):
    """The clock decides only until the default's trial ends; later trials count by the estimates
    they were admitted with. Here each later trial "takes" 10 000 s more than it does (a clock that
    jumps): the same candidates run and the same one is chosen as without the jumps, though a
    budget of 1000 default fits (a few thousand seconds) would be spent by the first jump."""
    import time as real_time

    import padim.autoconfig as auto

    files = sorted(shifted_texture_folder(tmp_path / "good", n=12, seed=8).iterdir())
    original = auto.candidates
    monkeypatch.setattr(auto, "candidates", lambda backbone, size: [
        c for c in original(backbone, size) if c.name in ("default", "deep", "shallow", "shared", "eps=1")])

    class JumpingClock:
        offset = 0.0

        @classmethod
        def perf_counter(cls):
            return real_time.perf_counter() + cls.offset

    def run(jump):
        try_one = auto._try

        def slow_try(model, passes, *args, dense, **kwargs):
            out = try_one(model, passes, *args, dense=dense, **kwargs)
            JumpingClock.offset += 0.0 if dense or not jump else 10_000.0
            return out

        with monkeypatch.context() as m:
            m.setattr(auto, "time", JumpingClock)
            m.setattr(auto, "_try", slow_try)
            chosen = auto.select(lambda **p: PaDiM(**{**COMMON, "progress": False, **p}), files,
                                 "efficientnet_lite0", SIZE, budget="1000x")
        return chosen, [(row.name, row.skipped, row.selection) for row in chosen.table]

    calm, calm_rows = run(jump=False)
    busy, busy_rows = run(jump=True)
    assert calm.budget_seconds < 10_000.0
    assert all(skipped is None for _, skipped, _ in calm_rows)
    assert busy_rows == calm_rows and busy.choice == calm.choice
    assert all(row.seconds > 10_000.0 for row in busy.table[1:])  # the clock did see the jumps


def test_a_tight_budget_runs_only_the_default(tmp_path):
    train = shifted_texture_folder(tmp_path / "good", n=12, seed=1)
    model = PaDiM(config="auto", budget="1x", **COMMON).fit(train)  # 1× one fit leaves nothing to select with
    rows = model.auto_table_
    assert rows[0]["name"] == "default" and rows[0]["skipped"] is None
    # all but those that change COMMON's image_size and d, which close the table
    assert all(row["skipped"] and row["skipped"].startswith("budget") for row in rows[1:-3])
    assert all(row["skipped"].startswith("you set") for row in rows[-3:])
    assert model.auto_choice_ == "default"
    # the table tells which budget would have tried the first candidate it skipped
    first = rows[1]
    assert first["needs_budget"].endswith("x") and int(first["needs_budget"][:-1]) >= 2
    assert format_table(rows, model.auto_choice_).splitlines()[-1] == (
        f"only the default ran in this budget; --budget {first['needs_budget']} would also try {first['name']}")


def test_auto_on_too_few_images_fits_the_parameters_as_given_with_a_warning(tmp_path):
    """auto is the default, so five good images are no error: the given configuration is fitted
    (the same model as config="fixed"), with a warning that says why."""
    train = shifted_texture_folder(tmp_path / "good", n=5)
    with pytest.warns(UserWarning, match="at least 6 good images, got 5: fitted the options as given"):
        model = PaDiM(**{**COMMON, "calibration_folds": 0}).fit(train)
    fixed = PaDiM(**{**COMMON, "calibration_folds": 0, "config": "fixed"}).fit(train)
    assert model.config == "auto" and model.auto_table_ is None and model.auto_choice_ is None
    np.testing.assert_array_equal(model.gaussian_.mean.numpy(), fixed.gaussian_.mean.numpy())


def test_config_names():
    assert PaDiM().config == "auto"
    assert PaDiM(config="default").config == "fixed"  # the name before auto became the default
    with pytest.raises(ValueError, match="'auto' or 'fixed'"):
        PaDiM(config="best")


def test_pinned_params_are_those_set_away_from_their_defaults():
    from padim.autoconfig import pinned_params

    assert pinned_params(PaDiM().get_params()) == frozenset()
    assert pinned_params(PaDiM(layers=["_blocks.2"], eps=0.5, cell=1).get_params()) == {"layers", "eps", "cell"}
    assert pinned_params(PaDiM(image_size=(200, 300), d=10).get_params()) == {"image_size", "d"}
    # own weights are for their backbone: no other backbone is tried
    assert pinned_params(PaDiM(backbone="resnet18", weights="r18.pth").get_params()) == {"backbone", "weights"}
    assert pinned_params(PaDiM(device="cpu", batch_size=2, seed=5, tile=None).get_params()) == frozenset()


def _recording_select(monkeypatch, choice_params):
    """Replace the selection by one that records its inputs and chooses ``choice_params``."""
    import padim.autoconfig as auto

    calls = []

    def select(factory, sources, backbone, image_size, *, pinned, **kw):
        calls.append(dict(pinned=pinned, model=factory(), backbone=backbone, image_size=image_size))
        row = auto.CandidateResult("pick", choice_params, seconds=1.0, image_auroc=1.0, pixel_auroc=1.0, pro=1.0,
                                   good_cv=0.0, selection=1.0)
        return auto.Selection("pick", choice_params, [row], 1.0)

    monkeypatch.setattr(auto, "select", select)
    return calls


def test_a_refit_chooses_again_from_the_users_parameters_not_the_last_choice(tmp_path, monkeypatch):
    train = shifted_texture_folder(tmp_path / "good", n=8)
    deep = ["_blocks.4", "_blocks.10", "_blocks.14"]
    calls = _recording_select(monkeypatch, {"layers": deep})
    model = PaDiM(**{**COMMON, "calibration_folds": 0}).fit(train)
    assert model.layers == deep and model.layers_ == deep and model.auto_choice_ == "pick"
    model.fit(train)
    assert len(calls) == 2
    for call in calls:  # both times: layers free to vary, the candidates built on the user's None
        assert call["pinned"] == {"image_size", "d"} and call["model"].layers is None
        assert call["model"].config == "fixed"  # candidates fit as given, never selecting again
    model.layers = ["_blocks.2", "_blocks.4"]  # set by the user after a selection: now it is theirs
    model.fit(train)
    assert calls[-1]["pinned"] == {"image_size", "d", "layers"} and calls[-1]["model"].layers == ["_blocks.2", "_blocks.4"]


def test_a_refit_after_auto_chose_another_backbone_fits_the_new_choice(tmp_path, monkeypatch):
    """The first fit chooses a ResNet18 (a local weights file), the refit the defaults: the refit
    is the defaults' plain fit (it raised "weights differ" against the first fit's ResNet)."""
    import torchvision

    import padim.autoconfig as auto

    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    choices = [{"backbone": "resnet18", "weights": str(weights), "layers": None}, {}]

    def select(factory, sources, backbone, image_size, **kw):
        params = choices.pop(0)
        row = auto.CandidateResult("pick", params, seconds=1.0, selection=1.0)
        return auto.Selection("pick", params, [row], 1.0)

    monkeypatch.setattr(auto, "select", select)
    train = shifted_texture_folder(tmp_path / "good", n=8)
    probe = sorted(train.iterdir())[:2]
    model = PaDiM(**{**COMMON, "calibration_folds": 0}).fit(train)
    assert model.backbone == "resnet18" and model.layers_ == ["layer1", "layer2", "layer3"]
    model.fit(train)
    assert model.backbone == "efficientnet_lite0" and model.weights is None
    fixed = PaDiM(**{**COMMON, "calibration_folds": 0, "config": "fixed"}).fit(train)
    np.testing.assert_allclose(model.score_samples(probe), fixed.score_samples(probe), rtol=1e-5)


def test_padim_fit_prints_the_memory_plan_of_the_choice_after_the_defaults(tmp_path, monkeypatch, capsys):
    """`padim fit` prints the memory plan of the options as given before the selection; when auto
    chooses another configuration, the chosen one's plan follows the candidate table."""
    from padim.cli import main

    _recording_select(monkeypatch, {"cell": 4})
    train = shifted_texture_folder(tmp_path / "good", n=8)
    assert main(["fit", str(train), "-o", str(tmp_path / "m.padim"), "--image-size", str(SIZE), "--d", "24",
                 "--folds", "0", "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("memory plan")]
    model = PaDiM.load(tmp_path / "m.padim", device="cpu")
    per_position = PaDiM(**{**COMMON, "config": "fixed", "cell": 1}).plan(train)
    assert model.cell_ == 4 and len(lines) == 2
    assert lines[0].startswith(f"memory plan: {per_position.gaussians} Gaussians × d=24:")
    assert lines[1] == model.plan_.describe().replace("memory plan:", "memory plan of the choice (pick):")
    assert f"{model.n_gaussians_} Gaussians" in lines[1] and model.n_gaussians_ < per_position.gaussians


def test_the_options_printed_for_every_candidate_parse_back_to_its_parameters():
    """``fixed_options`` of each candidate (and of a fixed size and a weights path with a space),
    read by `padim fit`'s own parser, give the candidate's parameters and --config fixed."""
    import shlex

    from padim.autoconfig import fixed_options
    from padim.cli import build_parser

    parser = build_parser()

    def read(options: list[str]) -> dict:
        args = parser.parse_args(["fit", "good", "-o", "m.padim", *options])
        return {"config": args.config, "backbone": args.backbone, "weights": args.weights,
                "image_size": args.image_size, "cell": args.cell, "eps": args.eps, "d": args.d,
                "layers": args.layers.split(",") if args.layers else None}

    defaults = read([])
    cases = [c.params for c in candidates("efficientnet_lite0", 256)] + [
        {"image_size": (320, 416)}, {"backbone": "resnet18", "weights": "/my weights/r18.pth", "layers": None}]
    for params in cases:
        assert read(shlex.split(fixed_options(params))) == {**defaults, "config": "fixed", **params}, params


def test_padim_fit_prints_options_that_refit_the_choice_without_selecting(tmp_path, monkeypatch, capsys):
    """The options `padim fit` prints after an auto fit, added to the user's own, fit the same
    model with --config fixed (no selection): the same scores."""
    import shlex

    from padim.cli import main

    calls = _recording_select(monkeypatch, {"layers": ["_blocks.2", "_blocks.4"], "eps": 0.05})
    train = shifted_texture_folder(tmp_path / "good", n=8)
    own = [str(train), "--image-size", str(SIZE), "--d", "24", "--folds", "0", "--device", "cpu"]
    assert main(["fit", *own, "-o", str(tmp_path / "auto.padim")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("the same fit without")]
    assert len(lines) == 1 and len(calls) == 1
    options = lines[0].split("your options and ", 1)[1]
    assert main(["fit", *own, "-o", str(tmp_path / "fixed.padim"), *shlex.split(options)]) == 0
    assert len(calls) == 1  # no second selection
    chosen, fixed = (PaDiM.load(tmp_path / name, device="cpu") for name in ("auto.padim", "fixed.padim"))
    assert fixed.auto_table_ is None and fixed.layers_ == chosen.layers_ == ["_blocks.2", "_blocks.4"]
    probe = sorted(train.iterdir())[:3]
    np.testing.assert_array_equal(chosen.score_samples(probe), fixed.score_samples(probe))
    assert chosen.describe()["auto-configuration"] == (
        f"chose 'pick' among 1 candidates; the same fit without selecting: {options}")


def test_nothing_left_to_vary_fits_as_given_without_a_selection(tmp_path, monkeypatch):
    calls = _recording_select(monkeypatch, {})
    train = shifted_texture_folder(tmp_path / "good", n=8)
    params = dict(COMMON, calibration_folds=0, layers=["_blocks.2", "_blocks.4"], cell=1, eps=0.05)
    model = PaDiM(**params).fit(train)
    assert calls == [] and model.auto_table_ is None and model.layers_ == ["_blocks.2", "_blocks.4"]


def test_pinned_candidates_are_not_tried_and_say_so(tmp_path):
    """layers and cell set by the user: the hook-point sets, the pooled Gaussians and the other
    backbones (their own hook points) are not tried; the table ends with them, marked."""
    import padim.autoconfig as auto

    train = shifted_texture_folder(tmp_path / "good", n=12, seed=3)
    params = dict(COMMON, progress=False, config="fixed", layers=["_blocks.2", "_blocks.4"], cell=1)
    pinned = auto.pinned_params(PaDiM(**params).get_params())
    built = []

    def factory(**p):
        built.append(p)
        return PaDiM(**{**params, **p})

    chosen = auto.select(factory, sorted(train.iterdir()), "efficientnet_lite0", SIZE, budget="1000x",
                         pinned=pinned)
    rows = {row.name: row for row in chosen.table}
    kept = {"deep", "shallow", "shared", "cells", "lite1", "lite2", "larger", "1.25x", "d=88"}
    assert {name for name, row in rows.items() if row.skipped} == kept
    assert all(rows[name].skipped.startswith("you set ") for name in kept)
    assert "layers" in rows["deep"].skipped and "cell" in rows["shared"].skipped
    assert {row.name for row in chosen.table if row.selection is not None} == {"default", "eps=0.01", "eps=1"}
    assert not any(set(p) & pinned for p in built)  # no model was even built for a kept one
    assert chosen.choice in {"default", "eps=0.01", "eps=1"}


def test_loaded_models_refit_as_fitted(tmp_path):
    train = shifted_texture_folder(tmp_path / "good", n=5)
    model = PaDiM(**{**COMMON, "calibration_folds": 0, "config": "fixed"}).fit(train)
    assert PaDiM.load(model.save(tmp_path / "m.padim"), device="cpu").config == "fixed"


def test_cli_fit_auto_prints_the_table_and_info_shows_it(tmp_path):
    from test_cli import RUNTIME, cli

    train = shifted_texture_folder(tmp_path / "good", n=12, seed=2)
    model = tmp_path / "auto.padim"
    rc, out, err = cli("fit", train, "-o", model, "--auto", "--budget", "1000x", "--image-size", SIZE,
                       "--d", 24, "--folds", 3, *RUNTIME)
    assert rc == 0, err
    assert "candidate  image AUROC" in err and "shared" in err
    rc, info, _ = cli("info", model)
    assert rc == 0 and "auto-configuration: chose" in info and "candidate  image AUROC" in info
    rc, _, err = cli("fit", train, "-o", tmp_path / "x.padim", "--auto", "--budget", "soon", *RUNTIME)
    assert rc == 2 and "--budget" in err and len(err.strip().splitlines()) == 1


def test_cli_fit_selects_by_default_and_fits_as_given_with_config_fixed(tmp_path, monkeypatch):
    from test_cli import RUNTIME, cli

    train = shifted_texture_folder(tmp_path / "good", n=8, seed=4)
    calls = _recording_select(monkeypatch, {"eps": 0.5})
    options = ["--image-size", SIZE, "--d", 24, "--folds", 3, *RUNTIME]
    rc, _, err = cli("fit", train, "-o", tmp_path / "auto.padim", *options)
    assert rc == 0, err
    assert len(calls) == 1 and calls[0]["pinned"] == {"image_size", "d"}
    assert PaDiM.load(tmp_path / "auto.padim", device="cpu").eps == 0.5  # the choice reached the file
    assert "pick" in err  # the candidate table was printed
    rc, _, err = cli("fit", train, "-o", tmp_path / "fixed.padim", "--config", "fixed", *options)
    assert rc == 0, err
    assert len(calls) == 1 and "candidate  image AUROC" not in err


def test_full_fit_estimate_keeps_the_fixed_part_and_scales_the_per_image_part():
    from padim.autoconfig import CALIBRATION_SHARE, estimate_full_fit

    # 40 images in 10 s, 0.1 s per image: 6 s fixed + 0.1 s × 200, plus calibration
    assert estimate_full_fit(10.0, 0.1, 40, 200) == pytest.approx((6.0 + 20.0) * (1 + CALIBRATION_SHARE))
    # a per-image cost above the fit's own average is capped by it (no negative fixed part)
    assert estimate_full_fit(4.0, 0.5, 40, 80) == pytest.approx(8.0 * (1 + CALIBRATION_SHARE))


def test_defect_masks_are_found_beside_the_image_and_in_mvtec_layout(tmp_path):
    from padim.validation import find_defect_mask, real_validation

    flat = tmp_path / "flat"
    flat.mkdir()
    image = np.full((40, 60, 3), 120, np.uint8)
    image[10:20, 30:45] = 250
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:45] = 255
    Image.fromarray(image).save(flat / "a.png")
    Image.fromarray(mask).save(flat / "a_mask.png")
    Image.fromarray(image).save(flat / "b.jpg")  # no mask
    mvtec = tmp_path / "product"
    (mvtec / "test" / "crack").mkdir(parents=True)
    (mvtec / "ground_truth" / "crack").mkdir(parents=True)
    Image.fromarray(image).save(mvtec / "test" / "crack" / "000.png")
    Image.fromarray(mask).save(mvtec / "ground_truth" / "crack" / "000_mask.png")
    assert find_defect_mask(flat / "a.png") == flat / "a_mask.png"
    assert find_defect_mask(flat / "b.jpg") is None
    assert find_defect_mask(mvtec / "test" / "crack" / "000.png") == mvtec / "ground_truth" / "crack" / "000_mask.png"
    found = real_validation(flat)
    assert len(found.images) == 2  # a_mask.png is a mask, not a defect image
    np.testing.assert_array_equal(found.masks[0], mask > 0)
    assert found.masks[1] is None
    found = real_validation(mvtec / "test" / "crack")
    np.testing.assert_array_equal(found.masks[0], mask > 0)


def aligned_pattern_folder(root, n=16, seed=0):
    rng = np.random.default_rng(seed)
    pattern = cv2.resize(rng.uniform(0.2, 0.8, size=(8, 8, 3)).astype(np.float32), (SIZE, SIZE))
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = np.clip(pattern + rng.normal(0, 0.01, size=pattern.shape), 0, 1)
        paths.append(root / f"{i:02d}.png")
        Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
    return paths, pattern


def test_real_defects_alone_decide_with_their_masks(tmp_path, monkeypatch):
    """``synthetic=False``: only the labelled defects (and their masks) score the candidates. The
    pixel model finds the real square defects; pixel AUROC and PRO come from their masks."""
    import padim.autoconfig as auto

    paths, pattern = aligned_pattern_folder(tmp_path / "good")
    real = tmp_path / "defects"
    real.mkdir()
    for i in range(4):
        image = (pattern * 255).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        y, x = 8 + 10 * i, 40 - 8 * i
        image[y:y + 8, x:x + 8] = 255 - image[y:y + 8, x:x + 8]
        mask[y:y + 8, x:x + 8] = 255
        Image.fromarray(image).save(real / f"{i}.png")
        Image.fromarray(mask).save(real / f"{i}_mask.png")
    monkeypatch.setattr(auto, "candidates", lambda backbone, size: [
        auto.Candidate("default", {"blind": True}), auto.Candidate("sighted", {"blind": False})])
    made = []
    monkeypatch.setattr(auto, "synthetic_validation", lambda *a, **k: made.append(1))
    chosen = auto.select(lambda **params: PixelModel(**params), paths, "any", SIZE, budget="1000x",
                         val_defects=real, synthetic=False)
    rows = {row.name: row for row in chosen.table}
    assert not made  # no synthetic defects were made
    assert chosen.choice == "sighted"
    assert rows["sighted"].image_auroc == 1.0 and rows["sighted"].pixel_auroc > 0.99 and rows["sighted"].pro > 0.9
    assert rows["default"].pixel_auroc < 0.8
    with pytest.raises(ValueError, match="needs val_defects"):
        auto.select(lambda **params: PixelModel(**params), paths, "any", SIZE, synthetic=False)


def test_cli_no_synthetic_needs_val_defects(tmp_path):
    from test_cli import RUNTIME, cli

    train = shifted_texture_folder(tmp_path / "good", n=8, seed=3)
    rc, _, err = cli("fit", train, "-o", tmp_path / "m.padim", "--auto", "--no-synthetic", *RUNTIME)
    assert rc == 2 and "--val-defects" in err and len(err.strip().splitlines()) == 1


def layer_case(root, case, size, n_good=24, n_defects=8, seed=0):
    """Good images: one smooth aligned pattern plus pixel noise. ``faint_blobs``: strong noise
    (σ 0.15) and large discs (radius 0.3·size) brightened by 0.2, visible only averaged over a wide
    field, which deep layers see; ``pits``: faint noise and discs of radius 2 px inverted, which
    only the fine shallow layers resolve. Labelled defects get their masks beside them."""
    rng = np.random.default_rng(seed)
    noise = 0.15 if case == "faint_blobs" else 0.02
    pattern = cv2.resize(rng.uniform(0.2, 0.8, size=(16, 16, 3)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    good, defects = root / "good", root / "defects"
    good.mkdir(parents=True)
    defects.mkdir()

    def sample():
        return np.clip(pattern + rng.normal(0, noise, size=pattern.shape), 0, 1)

    for i in range(n_good):
        Image.fromarray((sample() * 255).astype(np.uint8)).save(good / f"{i:02d}.png")
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n_defects):
        image = sample()
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        radius = 0.3 * size if case == "faint_blobs" else 2.0
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[mask] = np.clip(image[mask] + 0.2, 0, 1) if case == "faint_blobs" else 1 - image[mask]
        Image.fromarray((image * 255).astype(np.uint8)).save(defects / f"{i:02d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(defects / f"{i:02d}_mask.png")
    return sorted(good.iterdir()), defects


@pytest.mark.parametrize("case, size, expected", [("faint_blobs", 256, "deep"), ("pits", 128, "shallow")])
def test_selection_picks_the_layers_the_defects_need(tmp_path, monkeypatch, case, size, expected):
    """Constructed cases with labelled defects (real only): deep hook points for large faint blobs
    under strong noise, shallow ones for pits, among the three hook-point sets of Lite0."""
    import padim.autoconfig as auto

    goods, defects = layer_case(tmp_path, case, size)
    real_candidates = auto.candidates
    monkeypatch.setattr(auto, "candidates", lambda backbone, image_size: [
        c for c in real_candidates(backbone, image_size) if c.name in ("default", "deep", "shallow")])
    params = {**COMMON, "image_size": size, "progress": False}
    chosen = auto.select(lambda **p: PaDiM(**{**params, **p}), goods, "efficientnet_lite0", size, budget="1000x",
                         val_defects=defects, synthetic=False)
    rows = {row.name: row.selection for row in chosen.table}
    assert chosen.choice == expected, rows


def test_a_winner_whose_final_fit_does_not_fit_the_budget_left_is_not_chosen():
    from padim.autoconfig import CandidateResult, _affordable_best

    def row(name, selection, fit_cost, cost=1.0):
        return CandidateResult(name, {}, seconds=3.0, selection=selection, cost=cost, fit_seconds=2.0 * fit_cost,
                               fit_cost=fit_cost)

    table = [row("default", 0.80, 1.0), row("larger", 0.90, 4.5, cost=2.25), row("deep", 0.85, 1.2),
             CandidateResult("shared", {}, skipped="budget: needs ~9 s, 1 s left")]
    # one fit 10 s, 30 s left: larger's final fit, estimated at 4.5 fits, needs 45 s and does not fit; deep's 12 s does
    assert _affordable_best(table, one_fit=10.0, left=30.0).name == "deep"
    assert "45 s" in table[1].note and table[2].note is None
    assert _affordable_best(table, one_fit=10.0, left=50.0).name == "larger"
    assert _affordable_best(table, one_fit=10.0, left=5.0).name == "default"  # always affordable


@pytest.mark.parametrize("n_images", [6, 7, 31, 200])
def test_folds_partition_a_seeded_subset_and_never_fit_on_what_they_validate(n_images):
    from padim.autoconfig import FOLDS, MAX_SELECTION_IMAGES, selection_folds

    folds = selection_folds(n_images, seed=3)
    again = selection_folds(n_images, seed=3)  # seeded
    assert all(np.array_equal(a, b) and np.array_equal(c, d) for (a, c), (b, d) in zip(folds, again))
    parts = [set(part.tolist()) for part, _ in folds]
    subset = set().union(*parts)
    assert len(subset) == min(n_images, MAX_SELECTION_IMAGES) and subset <= set(range(n_images))
    assert sum(len(p) for p in parts) == len(subset)  # disjoint: every subset image validated once
    assert len(folds) == min(FOLDS, len(subset) // 2) and min(len(p) for p in parts) >= 2
    for (part, fit), held_out in zip(folds, parts):
        assert set(fit.tolist()) == subset - held_out


def test_fold_fit_rows_are_the_other_folds_good_images(tmp_path):
    """A shared pass fits each fold on rows of the validation list: exactly the other folds' good images."""
    from padim.autoconfig import _folds, selection_folds

    sources = sorted(shifted_texture_folder(tmp_path / "good", n=10, seed=5).iterdir())
    files, validation, folds, _ = _folds(sources, selection_folds(10, 0), seed=0, synthetic=True, real=None)
    goods = [set(fold.validation[:fold.n_goods]) for fold in folds]
    for k, fold in enumerate(folds):
        assert set(fold.fit_rows) == set().union(*(g for j, g in enumerate(goods) if j != k))
        assert len(fold.fit_rows) == len(fold.fit) and not set(fold.fit_rows) & set(fold.validation)
        # the same images: a fit row's array is its file, read as the selection reads it
        first = np.asarray(Image.open(files[fold.fit[0]]).convert("RGB"))
        assert np.array_equal(validation[fold.fit_rows[0]], first)


def test_a_candidate_replaces_the_default_only_on_a_clear_per_fold_gain():
    from padim.autoconfig import SIGNIFICANCE, CandidateResult, _clear_gain

    default = CandidateResult("default", {}, selection=0.80, fold_selections=[0.80, 0.70, 0.90, 0.80])
    steady = CandidateResult("steady", {}, selection=0.81, fold_selections=[0.81, 0.71, 0.91, 0.81])
    noisy = CandidateResult("noisy", {}, selection=0.81, fold_selections=[0.90, 0.60, 0.95, 0.79])
    clear, gain, error = _clear_gain(steady, default)
    assert clear and gain == pytest.approx(0.01) and error == pytest.approx(0.0, abs=1e-12)
    clear, gain, error = _clear_gain(noisy, default)
    gains = np.array([0.10, -0.10, 0.05, -0.01])  # by hand: mean 0.01, standard error 0.0469
    assert gain == pytest.approx(gains.mean()) and error == pytest.approx(gains.std(ddof=1) / 2)
    assert not clear and gain < SIGNIFICANCE * error


def test_selection_picks_one_shared_gaussian_for_a_randomly_shifted_texture(tmp_path, monkeypatch):
    """Unaligned texture, 16 images, all 176 channels: a Gaussian per position has a dozen samples
    for 176 features, the shared one thousands. Real defects (grey squares) confirm that shared is
    the right answer; the selection, from good images and synthetic defects only, must find it."""
    import padim.autoconfig as auto
    from sklearn.metrics import roc_auc_score

    size, params = 128, dict(COMMON, image_size=128, d=0)
    train = shifted_texture_folder(tmp_path / "good", n=32, seed=0, size=size, cells=4)
    files = sorted(train.iterdir())
    fit, held = files[:16], files[16:]
    defects = []
    for i, path in enumerate(held):
        image = np.asarray(Image.open(path)).copy()
        y, x = 16 + 5 * i, 88 - 5 * i
        image[y:y + 24, x:x + 24] = 128  # a flat grey square: nothing like the texture
        defects.append(image)
    goods = [np.asarray(Image.open(path)) for path in held]
    labels = [0] * len(goods) + [1] * len(defects)

    def real_auroc(model):
        return roc_auc_score(labels, [r.score for r in model.iter_results(goods + defects, maps=False)])

    options = {c.name: c.params for c in auto.candidates("efficientnet_lite0", size)}
    truth = {name: real_auroc(PaDiM(**dict(params, config="fixed", **options[name])).fit(fit, calibrate=False))
             for name in ("default", "shared")}
    assert truth["shared"] > truth["default"] + 0.1  # the constructed case has an obvious answer

    original = auto.candidates
    monkeypatch.setattr(auto, "candidates", lambda backbone, size: [
        c for c in original(backbone, size) if c.name in ("default", "shared")])
    model = PaDiM(config="auto", budget="1000x", **params).fit(fit)
    rows = {row["name"]: row for row in model.auto_table_}
    assert model.auto_choice_ == "shared", rows
    assert rows["shared"]["selection"] > rows["default"]["selection"]


def test_family_aurocs_score_each_family_against_the_good_images():
    from sklearn.metrics import roc_auc_score

    from padim.validation import DefectSet, family_aurocs

    good = np.array([0.1, 0.2, 0.3, 0.4])
    blank = np.zeros((2, 2, 3), np.uint8)
    sets = [DefectSet([blank] * 3, [None] * 3, ["hole", "blur", "hole"]), DefectSet([blank] * 2, [None] * 2,
                                                                                    ["blur", "hole"])]
    defects = np.array([0.9, 0.15, 0.35, 0.25, 0.5])  # hole 0.9, blur 0.15, hole 0.35 | blur 0.25, hole 0.5
    out = family_aurocs(good, defects, sets)
    assert out["hole"] == pytest.approx(roc_auc_score([0] * 4 + [1] * 3, [*good, 0.9, 0.35, 0.5]))
    assert out["blur"] == pytest.approx(roc_auc_score([0] * 4 + [1] * 2, [*good, 0.15, 0.25]))
    assert out["blur"] == pytest.approx(3 / 8)  # by hand: 0.15 beats 1 good, 0.25 beats 2, of 4 each


def test_a_candidate_that_misses_a_defect_family_does_not_replace_the_default():
    from padim.autoconfig import FAMILY_MARGIN, CandidateResult, _affordable_best

    folds = [0.80, 0.70, 0.90, 0.80]
    default = CandidateResult("default", {}, selection=0.80, fold_selections=folds, fit_cost=1.0,
                              family_auroc={"hole": 0.90, "blur": 0.40})
    # a clear mean gain, bought with holes it no longer finds
    blind = CandidateResult("blind", {}, selection=0.85, fold_selections=[f + 0.05 for f in folds], fit_cost=1.0,
                            family_auroc={"hole": 0.90 - FAMILY_MARGIN - 0.01, "blur": 0.95})
    steady = CandidateResult("steady", {}, selection=0.82, fold_selections=[f + 0.02 for f in folds], fit_cost=1.0,
                             family_auroc={"hole": 0.90 - FAMILY_MARGIN + 0.01, "blur": 0.60})
    assert _affordable_best([default, blind], one_fit=1.0, left=10.0) is default
    assert "hole" in blind.note
    assert _affordable_best([default, blind, steady], one_fit=1.0, left=10.0) is steady


def test_pooled_gaussians_are_not_tried_on_aligned_images(tmp_path, monkeypatch):
    """An aligned product (one fixed pattern, a little noise in each image): every position sees its
    own part of it, so cells and one shared Gaussian are skipped and the table says why; on the
    randomly shifted texture they are tried."""
    import padim.autoconfig as auto

    rng = np.random.default_rng(4)
    pattern = cv2.resize(rng.uniform(0, 1, size=(8, 8, 3)).astype(np.float32), (SIZE, SIZE),
                         interpolation=cv2.INTER_NEAREST)
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    for i in range(12):
        image = np.clip(pattern + rng.normal(0, 0.03, size=pattern.shape), 0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(aligned / f"{i:02d}.png")
    texture = shifted_texture_folder(tmp_path / "texture", n=12, seed=6)
    original = auto.candidates
    monkeypatch.setattr(auto, "candidates", lambda backbone, size: [
        c for c in original(backbone, size) if c.name in ("default", "deep", "shared", "cells")])

    def table(folder):
        chosen = auto.select(lambda **p: PaDiM(**{**COMMON, "progress": False, **p}), sorted(folder.iterdir()),
                             "efficientnet_lite0", SIZE, budget="1000x")
        return {row.name: row for row in chosen.table}

    rows = table(aligned)
    for name in ("shared", "cells"):
        assert rows[name].skipped.startswith("aligned images (position spread"), rows[name]
        assert rows[name].selection is None
    assert rows["deep"].skipped is None and rows["deep"].selection is not None
    rows = table(texture)
    assert all(rows[name].skipped is None and rows[name].selection is not None for name in ("shared", "cells"))


def test_a_steady_gain_below_the_minimum_does_not_replace_the_default():
    """Two nearly identical configurations agree fold by fold: +0.003 in every fold has no error
    at all, and is still no reason to leave the default."""
    from padim.autoconfig import MIN_GAIN, CandidateResult, _affordable_best, _clear_gain

    folds = [0.80, 0.70, 0.90, 0.80]
    default = CandidateResult("default", {}, selection=0.80, fold_selections=folds, fit_cost=1.0)
    tiny = CandidateResult("tiny", {}, selection=0.803, fold_selections=[f + 0.003 for f in folds], fit_cost=1.0)
    enough = CandidateResult("enough", {}, selection=0.801, fold_selections=[f + MIN_GAIN + 0.001 for f in folds],
                             fit_cost=1.0)
    clear, gain, error = _clear_gain(tiny, default)
    assert not clear and gain == pytest.approx(0.003) and error == pytest.approx(0.0, abs=1e-12)
    assert _affordable_best([default, tiny], one_fit=1.0, left=10.0) is default
    assert "not clear" in tiny.note
    assert _clear_gain(enough, default)[0]


def test_the_budget_unit_times_a_plain_fit_on_every_eighth_gaussian_and_scales_it(tmp_path, monkeypatch):
    """The d×d work of a plain fit is timed on every TIMING_STEP-th Gaussian only, TIMING_REPEATS
    times on interleaved sets: the Gaussians actually timed are that many, each set distinct, and
    the quickest timing is scaled by all over kept. A first factorisation's one-off cost is paid on
    a few Gaussians beforehand, outside the timing; a slow moment in one repeat is left out too (a
    fake clock: the first finalize costs 100 s, the next 50 s, every later one 1 s)."""
    import math

    import padim.gaussian as gaussian
    import padim.shared_passes as passes

    sources = sorted(shifted_texture_folder(tmp_path / "good", n=6, seed=7).iterdir())
    model = PaDiM(**{**COMMON, "image_size": 128, "progress": False})
    model._prepare_fit(sources)
    embeddings = [torch.randn(3, model.n_features_, *model.feature_size_)]
    fitted, summed = [], []
    original_init, original_finalize = gaussian.GaussianStats.__init__, gaussian.GaussianStats.finalize
    original_summed = type(model)._summed

    def recording(self, n_positions, dim, *args, **kwargs):
        fitted.append(n_positions)
        original_init(self, n_positions, dim, *args, **kwargs)

    def recording_summed(self, embeddings, every=1, first=0):
        summed.append(range(first, self.n_gaussians_, every))
        return original_summed(self, embeddings, every, first)

    class Clock:
        now = 10.0

        @staticmethod
        def perf_counter():
            return Clock.now

    def costly_at_first(self, *args, **kwargs):
        Clock.now += (100.0, 50.0)[len(finalized)] if len(finalized) < 2 else 1.0
        finalized.append(self.num_positions)
        return original_finalize(self, *args, **kwargs)

    finalized = []
    monkeypatch.setattr(gaussian.GaussianStats, "__init__", recording)
    monkeypatch.setattr(gaussian.GaussianStats, "finalize", costly_at_first)
    monkeypatch.setattr(type(model), "_summed", recording_summed)
    monkeypatch.setattr(passes, "time", Clock)
    seconds = passes.SharedPasses._plain_fit_seconds(model, embeddings)
    step = min(passes.TIMING_STEP, model.n_gaussians_ // 64)
    assert step > 1 and passes.TIMING_REPEATS == 2 and fitted == finalized and len(fitted) == 3
    assert fitted[0] <= 8 and fitted[1] == math.ceil(model.n_gaussians_ / step)
    timed = [set(gaussians) for gaussians in summed[1:]]
    assert fitted[1:] == [len(g) for g in timed] and not timed[0] & timed[1]  # interleaved, distinct
    assert seconds == pytest.approx(model.n_gaussians_ / fitted[2])  # 1 s scaled; the 100 s and 50 s left out


def test_the_sums_of_every_kth_gaussian_from_an_offset_are_those_gaussians_sums(tmp_path):
    """``_summed(every=k, first=j)`` (the budget unit's interleaved sets) holds the Gaussians j,
    j+k, …: their means and covariances as NumPy computes them from the float16-rounded samples."""
    sources = sorted(shifted_texture_folder(tmp_path / "good", n=4, seed=3).iterdir())
    model = PaDiM(**{**COMMON, "image_size": 128, "progress": False})
    model._prepare_fit(sources)
    embeddings = [torch.randn(3, model.n_features_, *model.feature_size_) for _ in range(2)]
    stats, n_images = model._summed(embeddings, every=5, first=3)
    samples = torch.cat(embeddings).half().double().flatten(2).numpy()  # [B, d, positions]
    kept = samples[:, :, 3::5]
    assert n_images == 6 and stats.num_positions == kept.shape[2]
    np.testing.assert_allclose(stats.mean().numpy(), kept.mean(axis=0).T, atol=1e-5)
    for position in (0, kept.shape[2] - 1):
        np.testing.assert_allclose(stats.covariance()[position].numpy(), np.cov(kept[:, :, position], rowvar=False),
                                   atol=1e-5)


def test_comparison_size_scales_an_image_down_to_the_input_pixels_never_up():
    from padim.validation import comparison_size

    assert comparison_size((512, 384, 3), 288 * 224) == (293, 220)  # factor sqrt(64512 / 196608) = 0.5728
    assert comparison_size((200, 100), 288 * 224) == (200, 100)
    assert comparison_size((512, 384), float("inf")) == (512, 384)


def test_a_shrunk_mask_keeps_every_touched_pixel_and_a_thin_scratch_whole():
    from scipy import ndimage

    from padim.validation import comparison_size, shrink_mask

    mask = np.random.default_rng(0).random((64, 48)) < 0.02
    # an integer factor: a pixel is set iff its 4×4 block holds a defect pixel (naive reference)
    assert np.array_equal(shrink_mask(mask, (16, 12)), mask.reshape(16, 4, 12, 4).any(axis=(1, 3)))
    assert shrink_mask(mask, (64, 48)) is mask
    scratch = np.zeros((512, 384), bool)
    rows = np.arange(100, 400)
    scratch[rows, rows - 50] = True  # one pixel wide, diagonal
    small = shrink_mask(scratch, comparison_size(scratch.shape, 288 * 224))
    assert ndimage.label(small, structure=np.ones((3, 3)))[1] == 1  # one region, as PRO should count it


def test_the_selection_compares_maps_and_masks_at_the_default_input_size(tmp_path, monkeypatch):
    import padim.autoconfig as auto

    folder = shifted_texture_folder(tmp_path / "good", n=8, size=2 * SIZE)  # the model's input is SIZE²
    seen = []
    metrics = auto.validation_metrics

    def recording(scores, maps, n_goods, synthetic, real=None):
        seen.append([m.shape for m in maps] + [m.shape for s in synthetic for m in s.masks])
        return metrics(scores, maps, n_goods, synthetic, real)

    monkeypatch.setattr(auto, "validation_metrics", recording)
    monkeypatch.setattr(auto, "candidates", lambda backbone, size: [
        auto.Candidate("default", {}), auto.Candidate("tiled", {"tile": SIZE})])  # tiled: scored by the model itself
    chosen = auto.select(lambda **p: PaDiM(**{**COMMON, "progress": False, **p}), sorted(folder.iterdir()),
                         "efficientnet_lite0", SIZE, budget="1000x")
    assert [row.shared_pass for row in chosen.table] == [True, False]
    assert len(seen) == 4 + 4  # both candidates on the 4 folds
    assert all(shape == (SIZE, SIZE) for shapes in seen for shape in shapes)


def test_a_second_candidates_trial_estimate_leaves_out_the_budget_units_timing(tmp_path, monkeypatch):
    """Only the default's trial times a plain fit (the budget's unit); the estimate for the next
    candidate of the same work is the default's own seconds without that timing, and for one of
    half the work (half the channels) the metrics' seconds plus half the rest. Its final fit's
    estimate (fit_estimate) is known once the default's bank and dense trial are."""
    import time

    import padim.autoconfig as auto

    sources = sorted(shifted_texture_folder(tmp_path / "good", n=10, seed=5).iterdir())
    files, validation, folds, _ = auto._folds(sources, auto.selection_folds(10, 0), seed=0, synthetic=True, real=None)

    def slow_unit(model, embeddings):
        time.sleep(0.5)
        return 1.0

    monkeypatch.setattr(auto.SharedPasses, "_plain_fit_seconds", staticmethod(slow_unit))
    default, other, half = (PaDiM(**{**COMMON, "progress": False, **p}) for p in ({}, {"eps": 0.1}, {"d": 12}))
    passes = auto.SharedPasses([default, other, half], files, validation)
    sizes = [image.shape[:2] for image in validation]
    assert passes.fit_estimate(other, 5) is None  # no bank, no dense trial yet
    t0 = time.perf_counter()
    _, _, fit_s, _, built_s = passes.fit_and_score(default, folds[0].fit_rows, folds[0].validation, sizes, dense=True)
    own = time.perf_counter() - t0 - built_s
    # before its trial, a candidate's fit as the trial will count it: the default's own exactly,
    # less with fewer channels
    assert passes.fit_estimate(default, len(folds[0].fit_rows)) == pytest.approx(fit_s)
    assert passes.fit_estimate(half, len(folds[0].fit_rows)) < fit_s
    passes.record(default, own, built_s, 0.0)
    assert passes.unit_s == 0.0  # spent
    assert passes.trial_estimate(other, 1.0, reference=100.0) <= own - 0.5
    passes.record(default, 10.0, 0.0, 2.0)
    assert passes.trial_estimate(other, 1.0, reference=100.0) == pytest.approx(10.0)
    assert passes.trial_estimate(half, 1.0, reference=100.0) == pytest.approx(2.0 + 8.0 / 2)


@pytest.mark.parametrize("shape, floor, expected", [
    ((100, 4000), (48, 1616), (48, 1920)),   # a strip: the floor's short side wins over 512 px (factor 0.48)
    ((100, 4000), None, (13, 512)),          # without a floor: 512 px on the long side
    ((576, 768), (224, 288), (384, 512)),    # the cookies: 512 px is already above their input
    ((10, 12), (240, 288), (10, 12)),        # never enlarged
    ((4000, 30), None, (512, 8)),            # no side below the 8 px an image must have
])
def test_validation_arrays_are_not_shrunk_below_the_floor(shape, floor, expected):
    from padim.validation import Reading, readable_arrays

    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    (index, array), = readable_arrays([image], max_side=512, reading=Reading(floor=floor))
    assert index == 0 and array.shape == (*expected, 3)


def test_the_validation_floor_is_the_default_candidates_input(tmp_path):
    from padim.validation import validation_floor

    root = tmp_path / "strips"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((100, 4000, 3), 90 + i, np.uint8)).save(root / f"{i}.png")
    files = sorted(root.iterdir())
    fixed = PaDiM(config="fixed", device="cpu")
    fixed._prepare_fit(files)
    assert validation_floor(PaDiM(config="fixed", device="cpu"), files) == tuple(fixed.input_size_)
    assert fixed.input_size_[1] > 512  # what the 512 px rule alone would have shrunk the strips below
    assert validation_floor(object(), files) is None  # a stand-in decides no geometry
    tiled = PaDiM(config="fixed", device="cpu", tile=256)
    assert validation_floor(tiled, files) is None and tiled.geometry_.tiled


def test_auto_fits_tall_narrow_images(tmp_path):
    """3000×40 px: shrunk to 512 px on the long side, the selection's images were 7 px wide, too
    small to read, and the fit failed with 'need at least 2 training samples per position, have 0'."""
    root = tmp_path / "tall"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(90, 160, (3000, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
    model = PaDiM(d=24, device="cpu", workers=0, calibration_folds=3, progress=False).fit(root)
    assert model.auto_table_ is not None and model.auto_choice_ is not None
    assert np.isfinite(model.score_samples(sorted(root.iterdir())[:2])).all()


@pytest.mark.filterwarnings("ignore:some images differ in aspect ratio")  # they do, on purpose
def test_auto_fits_a_folder_of_mixed_image_sizes(tmp_path):
    """A paste defect made with a donor of another size stopped the selection (padim.synthetic)."""
    root = tmp_path / "mixed"
    root.mkdir()
    rng = np.random.default_rng(2)
    for i, shape in enumerate([(64, 64)] * 4 + [(96, 80)] * 4):
        Image.fromarray(rng.integers(90, 160, (*shape, 3), dtype=np.uint8)).save(root / f"{i}.png")
    model = PaDiM(**{**COMMON, "progress": False}).fit(root)
    assert model.auto_table_ is not None
    assert np.isfinite(model.score_samples(sorted(root.iterdir()))).all()


def test_the_selection_reads_12bit_images_with_the_range_the_fit_decides(tmp_path):
    """12-bit data in 16-bit files: at the type's full scale the selection's 8-bit arrays held 16
    gray levels (0..16); read with the fit's range 0..4095 they span 0..255 as the 8-bit source did."""
    from padim.validation import readable_arrays, selection_reading
    from padim.value_range import EIGHT_BIT, ValueRange

    rng = np.random.default_rng(4)
    eight = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    deep, plain = tmp_path / "deep", tmp_path / "plain"
    deep.mkdir(), plain.mkdir()
    for i, image in enumerate(eight):
        assert cv2.imwrite(str(deep / f"{i}.png"), (image.astype(np.uint16) * 16)[:, :, ::-1])  # 0..4080
        Image.fromarray(image).save(plain / f"{i}.png")
    files = sorted(deep.iterdir())
    reading = selection_reading(PaDiM(**COMMON), files)
    assert reading.value_range == ValueRange(0.0, 4095.0) and reading.value_kind == "int"
    for (_, array), image in zip(readable_arrays(files, reading=reading), eight):
        expected = np.round(image.astype(np.float64) * 16 / 4095 * 255)  # by hand: v·16 of 4095, in 8 bits
        assert array.dtype == np.uint8 and np.abs(array - expected).max() <= 1
    assert max(int(a.max()) for _, a in readable_arrays(files)) <= 16  # the full 16-bit scale: all but black
    plain_files = sorted(plain.iterdir())
    plain_reading = selection_reading(PaDiM(**COMMON), plain_files)
    assert plain_reading.value_range == EIGHT_BIT
    for (_, array), image in zip(readable_arrays(plain_files, reading=plain_reading), eight):
        assert np.array_equal(array, image)  # 8-bit images are read as before


def test_the_selection_reads_each_files_header_once(tmp_path, monkeypatch):
    """The reading's floor and the shared passes decide the default's geometry from the same
    header sizes: each of the selection's files is opened for its size once, not once for each."""
    import padim.autoconfig as auto
    import padim.model as model_module

    files = sorted(shifted_texture_folder(tmp_path / "good", n=8, seed=2).iterdir())
    opened = []
    real_size = model_module.read_image_size
    monkeypatch.setattr(model_module, "read_image_size", lambda source: opened.append(source) or real_size(source))
    monkeypatch.setattr(auto, "candidates", lambda backbone, size: [
        auto.Candidate("default", {}), auto.Candidate("deep", {"layers": ["_blocks.4", "_blocks.10"]})])
    chosen = auto.select(lambda **p: PaDiM(**{**COMMON, "progress": False, **p}), files,
                         "efficientnet_lite0", SIZE, budget="1000x")
    assert [row.shared_pass for row in chosen.table] == [True, True]
    assert sorted(opened) == files


class _Stop(Exception):
    pass


def _select_stub(*args, **kwargs):
    raise _Stop  # the test needs only what happens before the selection


@pytest.mark.parametrize("budget,val_defects,warns", [("16x", None, True), ("4.5x", None, True), ("4x", None, False),
                                                      ("16x", "DEFECTS", False), ("600", None, False)])
def test_a_budget_above_the_default_without_real_defects_warns_once(tmp_path, monkeypatch, budget, val_defects, warns):
    """RESULTS.md §46: the candidates a larger budget adds were ranked wrongly by the synthetic
    defects alone on broad, soft defects; the warning points at --val-defects (a seconds budget,
    whose factor is unknown before the default's trial, is not judged)."""
    import warnings

    import padim.autoconfig as autoconfig

    monkeypatch.setattr(autoconfig, "select", _select_stub)
    train = shifted_texture_folder(tmp_path / "good", n=8)
    defects = str(tmp_path) if val_defects else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(_Stop):
            PaDiM(config="auto", budget=budget, val_defects=defects, **COMMON).fit(train)
    mine = [w for w in caught if "without real defect images (--val-defects)" in str(w.message)]
    assert len(mine) == (1 if warns else 0)
    if warns:
        assert f"budget {budget} " in str(mine[0].message) and "\n" not in str(mine[0].message)
        assert mine[0].filename == __file__  # attributed to the caller's fit, not to padim


def test_padim_fit_shows_the_budget_warning_before_the_selection_and_once(tmp_path, monkeypatch):
    """The warning is about the selection's extra candidates: ``padim fit`` shows it before the
    selection starts (the user can stop a 16x fit at once), not after it with the fit's warnings."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    import padim.autoconfig as autoconfig
    from padim.cli import main

    err = io.StringIO()
    seen_at_selection = []

    def select_seen(*args, **kwargs):
        seen_at_selection.append(err.getvalue())
        raise _Stop

    monkeypatch.setattr(autoconfig, "select", select_seen)
    train = shifted_texture_folder(tmp_path / "good", n=8)
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        main(["fit", str(train), "-o", str(tmp_path / "m.padim"), "--budget", "16x", "--image-size", str(SIZE),
              "--device", "cpu", "--workers", "0", "--quiet"])
    line = "padim: warning: budget 16x without real defect images (--val-defects)"
    assert len(seen_at_selection) == 1 and line in seen_at_selection[0]
    assert err.getvalue().count("without real defect images") == 1
