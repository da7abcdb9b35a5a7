"""PaDiM in tiled mode, end to end on synthetic 320×288 photos: detection and localisation (also
across tile seams), equality with whole-image features, Gaussian granularity against numpy,
the memory budget, the CLI, save/load and planning.

Cost (2 shared cores, one thread): one tiled fit on 8 images, one on 5 through the CLI (with
2-fold calibration) and one on 5 with a shared Gaussian; 128 px tiles, 32 px overlap, d = 30.
"""

import copy
from dataclasses import replace
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import padim.data
from padim import PaDiM
from padim.memory import MemoryPlan, fmt_bytes

from test_cli import cli

H, W = 320, 288
TILED = dict(tile=128, overlap=32, scale=1.0, d=30, seed=0, device="cpu", workers=0, batch_size=5,
             calibration_folds=0, config="fixed")
STRIDE = 4  # EfficientNet-Lite0's tiled hook points: blocks 2/4/10, strides 4/8/16
RUNTIME = ["--device", "cpu", "--workers", "0", "--batch-size", "5", "--quiet", "--threads", "1"]
DEFECT_SIDE = 20


def pattern(seed, h=H, w=W, defect=None, bright=False):
    """The same product in every image: smooth colour gradients, vertical stripes (12 px), three
    pale disks, plus mild sensor noise (``seed``). ``defect`` = (cy, cx) paints a 20×20 dark (or
    ``bright``) square centred there. Returns uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    img[..., 0] = 0.35 + 0.3 * x / w
    img[..., 1] = 0.5 - 0.2 * y / h
    img[..., 2] = 0.45 + 0.1 * x * y / (h * w)
    img[np.floor(x / 12) % 2 == 0] *= 0.85
    for cy, cx, r in ((70, 80, 30), (230, 200, 40), (250, 60, 22)):
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = (0.8, 0.75, 0.65)
    if defect is not None:
        cy, cx = defect
        half = DEFECT_SIDE // 2
        img[cy - half:cy + half, cx - half:cx + half] = 0.95 if bright else 0.05
    img += rng.normal(0, 0.015, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def as_tensor(images):
    """uint8 HxWx3 arrays → [B, 3, H, W] float in [0, 1], as the loader gives them (PNG is lossless)."""
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255)


def peak(amap):
    return np.unravel_index(int(np.argmax(amap)), amap.shape)


def forbid_image_processing(monkeypatch):
    """Make any image decoding or feature extraction fail the test."""
    def fail(*_args, **_kwargs):
        raise AssertionError("an image was processed before the memory check")
    monkeypatch.setattr(PaDiM, "_embed", fail)
    monkeypatch.setattr(padim.data, "load_image", fail)


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiled")
    train = [pattern(seed=i) for i in range(8)]
    (root / "train").mkdir()
    (root / "small").mkdir()  # the first 5 training images: granularity and CLI fits
    for i, img in enumerate(train):
        Image.fromarray(img).save(root / "train" / f"good_{i:02d}.png")
        if i < 5:
            Image.fromarray(img).save(root / "small" / f"good_{i:02d}.png")
    return {"root": root, "train": train, "train_dir": root / "train", "small": train[:5],
            "small_dir": root / "small", "good": [pattern(seed=100 + i) for i in range(3)]}


@pytest.fixture(scope="module")
def fitted(data):
    """One Gaussian per position, fitted by tiles on the 8 good images."""
    return PaDiM(cell=1, **TILED).fit(data["train_dir"])


@pytest.fixture(scope="module")
def places(fitted):
    """Defect centres from the tile layout: where four tile cores meet, and a core's centre.

    Tile t's core covers image pixels [t·core, (t+1)·core): the tile starts at t·core in the
    padded image, its core ``margin`` later, and the image sits ``margin`` (= top/left padding)
    into the padded image.
    """
    layout = fitted.geometry_.layout()
    top, _, left, _ = layout.padding
    core = layout.core
    core_starts_y = sorted({oy + layout.margin - top for oy, _ in layout.origins})
    core_starts_x = sorted({ox + layout.margin - left for _, ox in layout.origins})
    assert (core, top, left) == (64, 32, 32)  # 128 − 2·32; padding = margin
    assert core_starts_y == [0, 64, 128, 192, 256] and core_starts_x == [0, 64, 128, 192, 256]
    seam = (core_starts_y[2], core_starts_x[3])  # (128, 192): corner of four cores
    centre = (core_starts_y[2] + core // 2, core_starts_x[3] + core // 2)  # (160, 224): same core row/col
    bright = (core_starts_y[4] + core // 2, core_starts_x[2] + core // 2)  # (288, 160)
    return {"seam": seam, "centre": centre, "bright": bright}


@pytest.fixture(scope="module")
def tests(data, places):
    """Test images (3 good, 3 defective) with their scores and maps from the fitted model."""
    images = {f"good{i}": img for i, img in enumerate(data["good"])}
    images["centre"] = pattern(200, defect=places["centre"])
    images["seam"] = pattern(201, defect=places["seam"])
    images["bright"] = pattern(202, defect=places["bright"], bright=True)
    return images


@pytest.fixture(scope="module")
def scored(fitted, tests):
    names = list(tests)
    results = list(fitted.iter_results([tests[n] for n in names], maps=True))
    return {n: r for n, r in zip(names, results)}


@pytest.fixture(scope="module")
def small_embeddings(data):
    """Reference features of the 5 small-set images: [5, d, 80, 72] as numpy float64.

    Any model with these layers, d, seed and geometry embeds identically; a throw-away planned
    (not fitted) one computes them."""
    model = PaDiM(cell=1, **TILED)
    model.plan(data["small"])
    with torch.no_grad():
        emb = torch.cat([model._embed(as_tensor([img])) for img in data["small"]])
    return emb.double().numpy()


@pytest.fixture(scope="module")
def cli_model(data):
    """``padim fit`` with tiles and 2×2 cells on the 5 small-set images (2-fold calibration)."""
    path = data["root"] / "cell2.padim"
    rc, out, err = cli("fit", data["small_dir"], "-o", path, "--tile", "128", "--overlap", "32", "--scale", "1",
                       "--cell", "2", "--d", "30", "--folds", "2", "--config", "fixed", *RUNTIME)
    assert rc == 0, err
    return {"path": path, "out": out, "err": err}


@pytest.fixture(scope="module")
def image_model(data):
    return PaDiM(cell="image", **TILED).fit(data["small_dir"])


# ------------------------------------------------------------------- detection

def test_fitted_geometry(fitted):
    g = fitted.geometry_
    assert g.tiled and (g.tile, g.margin, g.scale) == (128, 32, 1.0)
    assert g.input_size == (H, W)  # scale 1: native size
    assert fitted.feature_size_ == (H // STRIDE, W // STRIDE)
    assert fitted.cell_ == 1 and fitted.n_gaussians_ == 80 * 72
    assert tuple(fitted.gaussian_.mean.shape) == (80 * 72, 30)


@pytest.mark.parametrize("name", ["centre", "bright"])
def test_defect_scores_above_every_good_image_and_is_localised(scored, places, name):
    good = max(scored[f"good{i}"].score for i in range(3))
    result = scored[name]
    assert result.score > good, (name, result.score, good)
    amap = result.anomaly_map
    assert amap.shape == (H, W) and amap.dtype == np.float32
    assert amap.max() == pytest.approx(result.score)  # score = max of the map (input = original size)
    py, px = peak(amap)
    cy, cx = places[name]
    assert abs(py - cy) <= 16 and abs(px - cx) <= 16, (name, (py, px), (cy, cx))


def test_good_maps_at_original_size_and_finite(scored):
    for i in range(3):
        amap = scored[f"good{i}"].anomaly_map
        assert amap.shape == (H, W) and np.isfinite(amap).all() and amap.min() >= 0


def test_defect_on_tile_seam_found_like_one_in_tile_centre(scored, places):
    """A square straddling the corner where four tile cores meet is the top score and peaks as
    high as the same square in the middle of a core."""
    good = max(scored[f"good{i}"].score for i in range(3))
    for name in ("seam", "centre"):
        assert scored[name].score > good
        py, px = peak(scored[name].anomaly_map)
        cy, cx = places[name]
        assert abs(py - cy) <= 16 and abs(px - cx) <= 16, (name, (py, px), (cy, cx))
    ratio = scored["seam"].anomaly_map.max() / scored["centre"].anomaly_map.max()
    assert 1 / 1.5 < ratio < 1.5, ratio


def test_scoring_net_of_a_tiled_model_gives_its_maps_and_scores(fitted, tests, scored):
    """``scoring_net()`` (the module an export traces) cuts, embeds and stitches the tiles itself:
    the estimator's maps (a seam defect included) and scores from whole images."""
    names = ["good0", "seam", "centre"]
    maps, scores = fitted.scoring_net()(as_tensor([tests[n] for n in names]))
    for k, name in enumerate(names):
        np.testing.assert_allclose(maps[k].numpy(), scored[name].anomaly_map, rtol=1e-4,
                                   atol=1e-4 * scored[name].anomaly_map.max())
    np.testing.assert_allclose(scores.numpy(), [scored[n].score for n in names], rtol=1e-4)


# ------------------------------------------------- tiled features = whole-image features

def _embed_pair(image, overlap, tile):
    common = dict(layers=["_blocks.2", "_blocks.4"], d=30, seed=3, device="cpu", workers=0,
                  calibration_folds=0, cell=1)
    tiled = PaDiM(tile=tile, overlap=overlap, scale=1.0, **common)
    tiled.plan([image])
    whole = PaDiM(tile=None, image_size=image.shape[:2], **common)
    whole.plan([image])
    assert not whole.geometry_.tiled and whole.geometry_.input_size == image.shape[:2]
    assert torch.equal(tiled.channel_index_, whole.channel_index_)
    x = as_tensor([image])
    return tiled, tiled._embed(x), whole._embed(x)


def test_tiled_features_equal_whole_image_features_in_the_interior():
    """Hook points blocks 2/4 (strides 4/8) have a receptive-field radius of 33 px, +4 px for the
    nearest upsampling of the stride-8 map: with a 48 px overlap every kept tile cell sees only
    real image pixels, exactly as in one whole-image pass, so the interior agrees to float32
    rounding (observed max |Δ| ≈ 2e-5 on features up to ≈ 45, i.e. ~1e-6 of a feature's spread;
    tolerance 1e-4). Within ~37 px of the image border the two differ by design: a whole-image
    pass zero-pads every layer, while tiles see the mean-colour fill run through the network."""
    image = pattern(7, h=256, w=224)  # multiples of 32: both grids are 64 × 56
    model, tiled, whole = _embed_pair(image, overlap=48, tile=160)
    assert tiled.shape == whole.shape == (1, 30, 64, 56)
    band = model.geometry_.margin // model.geometry_.stride  # 12 cells = 48 px
    torch.testing.assert_close(tiled[..., band:-band, band:-band], whole[..., band:-band, band:-band],
                               atol=1e-4, rtol=1e-4)


def test_too_narrow_overlap_shows_seams():
    """The comparison above is sensitive: with a 16 px overlap (< the 37 px receptive field) the
    interior differs by a sizeable fraction of a feature's spread (observed ≈ 0.5 σ at most)."""
    image = pattern(7, h=256, w=224)
    _, tiled, whole = _embed_pair(image, overlap=16, tile=128)
    spread = whole.std(dim=(0, 2, 3), keepdim=True)
    band = 12
    diff = ((tiled - whole).abs() / spread)[..., band:-band, band:-band]
    assert float(diff.max()) > 0.1


# ----------------------------------------------------------------------- granularity

def test_shared_gaussian_is_mean_and_covariance_of_all_vectors(image_model, small_embeddings):
    model = image_model
    assert model.cell_ == "image" and model.n_gaussians_ == 1
    assert tuple(model.gaussian_.mean.shape) == (1, 30)
    vectors = small_embeddings.transpose(0, 2, 3, 1).reshape(-1, 30)  # every position of every image
    assert vectors.shape == (5 * 80 * 72, 30)
    np.testing.assert_allclose(model.gaussian_.mean.numpy()[0], vectors.mean(axis=0), rtol=1e-4, atol=1e-4)
    # whitener = L⁻¹ with L Lᵀ = Σ + λI, λ = eps · mean variance: W (Σ + λI) Wᵀ = I.
    cov = np.cov(vectors, rowvar=False)
    lam = model.eps * np.diag(cov).mean()
    assert model.gaussian_.reg == pytest.approx(lam, rel=1e-5)
    w = model.gaussian_.whitener.double().numpy()[0]
    np.testing.assert_allclose(w @ (cov + lam * np.eye(30)) @ w.T, np.eye(30), atol=2e-3)


def test_shared_gaussian_scores(image_model, tests):
    results = list(image_model.iter_results([tests["good0"], tests["centre"]], maps=True))
    for r in results:
        assert np.isfinite(r.score) and r.score > 0
        assert r.anomaly_map.shape == (H, W)
    assert results[1].score > results[0].score


def test_cell_model_means_pool_each_2x2_block(cli_model, small_embeddings):
    model = PaDiM.load(cli_model["path"], device="cpu", workers=0)
    assert model.cell_ == 2 and model.geometry_.tiled
    gh, gw = 80 // 2, 72 // 2
    assert model.n_gaussians_ == gh * gw and tuple(model.gaussian_.mean.shape) == (gh * gw, 30)
    # Reference: mean over images and over the 2×2 positions of each cell; cells row by row.
    # (training embeddings enter the sums rounded to float16 values: padim.model.as_float16)
    n, d = small_embeddings.shape[:2]
    rounded = np.asarray(small_embeddings).astype(np.float16).astype(np.float64)
    blocks = rounded.reshape(n, d, gh, 2, gw, 2).mean(axis=(0, 3, 5))  # [d, gh, gw]
    np.testing.assert_allclose(model.gaussian_.mean.numpy(), blocks.reshape(d, -1).T, rtol=1e-4, atol=1e-4)
    assert model.calibrator_ is not None


def test_n_train_counts_images_not_cell_samples(image_model, cli_model):
    assert image_model.n_train_ == 5
    assert PaDiM.load(cli_model["path"], device="cpu").n_train_ == 5


def test_shared_gaussian_needs_two_images(data):
    with pytest.raises(ValueError, match="at least 2"):
        PaDiM(cell="image", **TILED).fit(data["small"][:1])


# ---------------------------------------------------------------------- memory budget

def test_budget_too_small_for_the_chosen_cell_is_refused_before_any_image(data, monkeypatch):
    forbid_image_processing(monkeypatch)
    model = PaDiM(cell=1, max_memory="1M", **TILED)
    with pytest.raises(MemoryError) as info:
        model.fit(data["train_dir"])
    message = str(info.value)
    assert "1.0 MiB" in message  # the budget
    assert "5760 Gaussians" in message and "d=30" in message  # what was planned
    assert "cell" in message and "smaller d" in message  # what to change
    assert not hasattr(model, "gaussian_")


def test_budget_too_small_for_any_cell_is_refused_before_any_image(data, monkeypatch):
    forbid_image_processing(monkeypatch)
    model = PaDiM(cell="auto", max_memory=2**20, **TILED)
    with pytest.raises(MemoryError, match=r"memory budget 1\.0 MiB is too small .* larger budget"):
        model.fit(data["train_dir"])


def test_cli_budget_too_small_is_one_line_exit_2(data, monkeypatch, tmp_path):
    forbid_image_processing(monkeypatch)
    out = tmp_path / "m.padim"
    rc, stdout, err = cli("fit", data["train_dir"], "-o", out, "--tile", "128", "--overlap", "32", "--scale", "1",
                          "--d", "30", "--cell", "1", "--max-memory", "1M", "--folds", "0", "--config", "fixed", *RUNTIME)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("padim fit: error: "), err
    assert "1.0 MiB" in lines[0]
    assert not out.exists()


def test_auto_cell_picks_the_finest_that_fits_without_fitting(data, monkeypatch):
    """``plan`` decides geometry and granularity from the first image's header only."""
    forbid_image_processing(monkeypatch)
    per_position = PaDiM(cell=1, **TILED).plan(data["train_dir"])
    budget = per_position.process + 100 * 2**20  # 100 MiB for the Gaussians and a pass, beside the process
    model = PaDiM(cell="auto", max_memory=budget, **TILED)
    plan = model.plan(data["train_dir"])
    assert isinstance(plan, MemoryPlan)
    assert per_position.total > budget >= plan.total
    assert model.cell_ == 2 and plan.gaussians == model.n_gaussians_ == 40 * 36
    assert plan.d == 30 and plan.feature_positions == 80 * 72
    assert model.geometry_.input_size == (H, W) and model.geometry_.tile == 128
    assert not hasattr(model, "gaussian_")
    assert model._extractor is None  # not even the backbone was built


def test_plan_on_a_fitted_model_keeps_it_usable(fitted, tests, scored):
    model = copy.deepcopy(fitted)  # a copy builds its own feature extractor
    model.plan([pattern(0, h=160, w=144)])
    assert model.score_samples([tests["good0"]])[0] == scored["good0"].score


# ------------------------------------------------------------------------------- CLI

def test_cli_fit_prints_plan_and_writes_a_model(cli_model):
    assert cli_model["path"].is_file()
    assert "memory plan: 1440 Gaussians × d=30" in cli_model["err"]
    assert "fitted on" in cli_model["out"]


def test_cli_info_shows_tiles_and_memory_plan(cli_model):
    rc, out, err = cli("info", cli_model["path"])
    assert rc == 0, err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["tiles"] == "128 px, overlap 32 px, scale 1"
    assert lines["Gaussians"] == "1440 (cell 2)"
    assert lines["input size (h, w)"] == "[320, 288]"
    assert lines["memory plan"].startswith("1440 Gaussians × d=30") and "estimated peak" in lines["memory plan"]


def test_the_whole_fit_plan_reloads_with_the_model(cli_model, data):
    """The saved plan keeps the pass and the process it was planned with (its total is derived)."""
    model = PaDiM.load(cli_model["path"], device="cpu", workers=0)
    planned = PaDiM(cell=2, d=30, tile=128, overlap=32, scale=1, calibration_folds=2, device="cpu", workers=0,
                    batch_size=5)
    planned.plan(data["small_dir"])
    assert model.plan_ == planned.plan_ and model.plan_.process > 0 and model.plan_.backbone_pass > 0
    lines = dict(line.split(": ", 1) for line in cli("info", cli_model["path"])[1].splitlines())
    assert f"{fmt_bytes(model.plan_.total)} for the whole fit" in lines["memory plan"]


def test_cli_score_needs_no_tiling_options(cli_model, data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(data["good"][0]).save(folder / "a_good.png")
    Image.fromarray(pattern(300, defect=(160, 224))).save(folder / "b_defect.png")
    # Another size, same aspect: resized to the model's 320×288 for scoring, map back at 240×216.
    Image.fromarray(pattern(301, h=240, w=216)).save(folder / "c_small.png")
    tsv, maps = tmp_path / "scores.tsv", tmp_path / "maps"
    rc, out, err = cli("score", cli_model["path"], folder, "-o", tsv, "--save-maps", maps, *RUNTIME)
    assert rc == 0, err
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    scores = {row[0]: float(row[1]) for row in rows}
    assert set(scores) == {"a_good.png", "b_defect.png", "c_small.png"}
    assert scores["b_defect.png"] > scores["a_good.png"]
    sizes = {"a_good": (H, W), "b_defect": (H, W), "c_small": (240, 216)}
    for name, size in sizes.items():
        amap = np.load(maps / f"{name}.npy")
        assert amap.shape == size and amap.dtype == np.float32 and np.isfinite(amap).all()
    assert np.load(maps / "b_defect.npy").max() == pytest.approx(scores["b_defect.png"], rel=1e-5)
    py, px = peak(np.load(maps / "b_defect.npy"))
    assert abs(py - 160) <= 16 and abs(px - 224) <= 16


# ------------------------------------------------------------------------- save/load

def test_save_load_gives_bit_identical_scores(fitted, tests, scored, tmp_path):
    path = fitted.save(tmp_path / "tiled.padim")
    loaded = PaDiM.load(path, device="cpu", workers=0, batch_size=5)
    assert loaded.geometry_ == fitted.geometry_ and loaded.geometry_.tiled
    assert loaded.cell_ == fitted.cell_ == 1 and loaded.layers_ == fitted.layers_
    assert (loaded.tile, loaded.overlap, loaded.scale) == (128, 32, 1.0)
    assert torch.equal(loaded.channel_index_, fitted.channel_index_)
    names = ["good0", "seam"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no aspect-ratio or other warnings
        results = list(loaded.iter_results([tests[n] for n in names], maps=True))
    for name, result in zip(names, results):
        assert result.score == scored[name].score
        assert np.array_equal(result.anomaly_map, scored[name].anomaly_map)


def test_loaded_tiled_model_keeps_cell_granularity(cli_model):
    model = PaDiM.load(cli_model["path"], device="cpu")
    assert model.cell_ == 2 and model.tile == 128 and model.overlap == 32 and model.cell == 2
    assert model.geometry_.layout().core == 64


# ------------------------------------------------------------------ the size rule, end to end

def _header_only(h, w):
    """An image of h × w whose pixels cost no memory (the geometry reads only the size)."""
    return np.broadcast_to(np.zeros(3, np.uint8), (h, w, 3))


def test_geometry_comes_from_the_median_training_image(monkeypatch):
    forbid_image_processing(monkeypatch)
    model = PaDiM(device="cpu", workers=0)
    small, large = _header_only(460, 1130), _header_only(3872, 3200)
    model.plan([large, small, small, small])  # the stray large photo does not decide
    assert model.geometry_.input_size == (160, 400)  # BSData's 256² area, as for a set of one size
    model.plan([small, large, large, large])
    assert model.geometry_.input_size == (1616, 1328) and not model.geometry_.tiled


def test_memory_budget_lowers_the_resolution_for_an_explicit_cell(monkeypatch):
    """cell=1 (one Gaussian per position) at the rule's 1616 × 1328 needs ~47 GiB: under a 6 GiB
    budget the input shrinks until the per-position plan fits, instead of refusing."""
    forbid_image_processing(monkeypatch)
    common = dict(device="cpu", workers=0, cell=1, calibration_folds=0)
    full = PaDiM(image_size=(1616, 1328), **common)
    full.plan([_header_only(3872, 3200)])
    assert full.plan_.peak > 6 * 2**30
    model = PaDiM(max_memory="6G", **common)
    model.plan([_header_only(3872, 3200)])
    h, w = model.geometry_.input_size
    assert model.plan_.peak <= 6 * 2**30 and model.cell_ == 1
    assert 160 * 400 < h * w < 1616 * 1328 and abs(h / w - 3872 / 3200) < 0.05


def test_auto_tiles_under_a_small_budget_with_the_receptive_field_overlap(monkeypatch):
    forbid_image_processing(monkeypatch)
    model = PaDiM(device="cpu", workers=0, max_memory="2G")
    model.plan([_header_only(3872, 3200)])
    g = model.geometry_
    # one pass over 1614 × 1334 would need ~830 MB > 2 GiB / 4: tiles of 1024 px, overlap 192 px
    # (EfficientNet-Lite0 blocks 2/4/10), one tile per batch (405 MB each)
    assert g.tiled and (g.tile, g.margin) == (1024, 192) and g.tiles_per_batch(16) == 1
    assert model.plan_.total <= 2 * 2**30


def test_an_explicit_budget_bounds_the_whole_fit_not_only_the_gaussians(monkeypatch):
    """RESULTS.md §48: at --max-memory 2G a 12 MP fit planned 1.87 GiB of Gaussians and peaked at
    2.50 GiB. Now the plan counts one backbone pass and the rest of the process, by hand here:
    a pass over one 1024² tile is 4 bytes × 96.5625 floats per pixel (Lite0 blocks 2/4/10, d 176)
    × 1024² = 405 012 480 bytes; the process is PROCESS_RESERVE_BYTES + Lite0's 18 776 292 bytes
    of weights × WEIGHT_COPIES + the float32 tile and the whole 1614×1334
    input, 12 × (1024² + 1614 × 1334) bytes."""
    from padim.memory import PROCESS_RESERVE_BYTES, WEIGHT_COPIES

    forbid_image_processing(monkeypatch)
    model = PaDiM(device="cpu", workers=0, max_memory="2G")
    plan = model.plan([_header_only(3872, 3200)])
    assert model.geometry_.input_size == (1614, 1334)
    assert plan.backbone_pass == 405_012_480
    assert plan.process == PROCESS_RESERVE_BYTES + WEIGHT_COPIES * 18_776_292 + 12 * (1024**2 + 1614 * 1334)
    assert plan.total == plan.process + max(plan.peak, plan.statistics + plan.embedding_cache + plan.backbone_pass)
    assert plan.total <= 2 * 2**30 and model.cell_ == 8  # 4×4 cells (1.87 GiB + the rest) no longer fit
    assert PaDiM(device="cpu", workers=0, max_memory="3G").plan([_header_only(3872, 3200)]).gaussians == 8484


def test_a_tiled_model_fits_and_applies_the_whole_image_check(data, tests):
    # The held-out maps and the scored ones are stitched maps at the input size (scale 1: the image's).
    model = PaDiM(cell=1, **dict(TILED, calibration_folds=4)).fit(data["train_dir"])
    rule = model.whole_image_
    assert rule is not None and rule.base == model.calibrator_.threshold_
    images = [tests["good0"], tests["centre"], np.zeros((H, W, 3), np.uint8)]
    maps = np.stack(model.anomaly_maps(images)).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(model.score_samples(images), rule.apply(maps.max(axis=1), maps.mean(axis=1)),
                               rtol=1e-5)
    assert maps[0].mean() < rule.gate <= maps[2].mean() and model.predict(images[2:]).all()


def test_a_smaller_batch_comes_before_coarser_gaussians(monkeypatch):
    """WideResNet50-2 (d 550) on 31 cookie-sized images at 2600 MiB: 4×4 cells do not fit with 16
    images per batch (its features and a pass over 16 images), so the batch shrinks first; it
    costs speed only, where 8×8 cells would cost accuracy."""
    from padim.memory import plan_memory

    forbid_image_processing(monkeypatch)
    model = PaDiM(device="cpu", workers=0, backbone="wide_resnet50_2", max_memory="2600M")
    plan = model.plan([_header_only(576, 768)] * 31)
    g = model.geometry_
    assert model.cell_ == 4 and 1 <= g.batch < 16 and plan.batch_size == g.batch
    assert plan.total <= 2600 * 2**20
    gh, gw = g.feature_size
    full = plan_memory(plan.gaussians, plan.d, gh * gw, 16, model.calibration_folds, 31,
                       **model._outside_gaussians(replace(g, batch=16)))
    assert full.total > 2600 * 2**20  # the same cells at the full batch would not have fitted


def test_a_tight_budget_shrinks_the_input_before_it_leaves_one_shared_gaussian(monkeypatch):
    """RESULTS.md §48: at 1500M a 12 MP photo's whole input fitted only one shared Gaussian (image
    AUROC 0.69 on an aligned product); a smaller input with a grid of cells fits (1.00). Where
    the user asks for one shared Gaussian, or fixes the input size, nothing changes."""
    forbid_image_processing(monkeypatch)
    photo = [_header_only(3872, 3200)]
    full = PaDiM(device="cpu", workers=0, max_memory="2G")
    full.plan(photo)
    model = PaDiM(device="cpu", workers=0, max_memory="1500M")
    plan = model.plan(photo)
    assert model.cell_ != "image" and plan.total <= 1500 * 2**20
    (h, w), (fh, fw) = model.geometry_.input_size, full.geometry_.input_size
    assert h * w < fh * fw and abs(h / w - fh / fw) < 0.02  # smaller, aspect kept
    shared = PaDiM(device="cpu", workers=0, max_memory="1500M", cell="image")
    shared.plan(photo)
    assert shared.geometry_.input_size == (fh, fw) and shared.cell_ == "image"
    fixed = PaDiM(device="cpu", workers=0, max_memory="1500M", image_size=(fh, fw))
    fixed.plan(photo)
    assert fixed.geometry_.input_size == (fh, fw) and fixed.cell_ == "image"  # the size the user fixed
