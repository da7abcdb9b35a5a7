"""Memory plan arithmetic, budget parsing and the choice of Gaussian granularity."""

import math

import pytest

from padim.memory import (GIB, MIB, MemoryPlan, choose_granularity, fmt_bytes, held_out_images, parse_memory,
                          plan_memory)


def test_plan_per_position_hand_computed():
    plan = plan_memory(gaussians=100, d=10, feature_positions=100, batch_size=1)
    # float64 Σxxᵀ as a packed lower triangle (55 of 100 entries), Σx and the shift
    assert plan.statistics == 8 * (100 * 55 + 2 * 100 * 10) == 60_000
    # finalize: covariance, Cholesky factor and inverse of one chunk (here all 100 positions),
    # plus the packed float32 lower triangles (55 values per 10×10 whitener)
    assert plan.finalize == 8 * 3 * 100 * 100 + 4 * 100 * 55 == 262_000
    # model: float32 mean + dense whitener, float16 packed triangles, float32 scale per position
    assert plan.model == 4 * (100 * 100 + 100 * 10) + 2 * 100 * 55 + 4 * 100 == 55_400
    assert plan.batch_features == 1 * 100 * 10 * 12 == 12_000
    # grouped updates of d = 10 float16 samples (padim.gaussian.GroupedUpdates), their float64 centred
    # copy and d×d products per chunk (all 100 positions), and the float32 square + packed product buffers;
    # the update made position-major in one transposed float16 copy of the group
    assert plan.update_temporaries == (2 * 10 * 10 * 100 + 2 * 10 * 10 * 100 + 8 * 100 * (10 * 10 + 10 * 10)
                                       + 4 * 100 * (100 + 55))
    assert plan.calibration == 0
    assert plan.samples_per_gaussian == 1
    # no calibration: the fit loop, or statistics + finalize (the model is built after the sums go)
    assert plan.peak == max(60_000 + 12_000 + 262_000, 60_000 + 262_000) == 334_000
    assert plan.as_dict()["peak"] == 334_000
    assert "100 Gaussians × d=10" in plan.describe()


def test_plan_cells_scale_statistics_with_cells_and_features_with_positions():
    # a 10×10 grid in 2×2 cells: 25 Gaussians, 100 positions per image, 4 samples per image each
    plan = plan_memory(gaussians=25, d=10, feature_positions=100, batch_size=2)
    assert plan.statistics == 8 * (25 * 55 + 2 * 25 * 10) == 15_000
    assert plan.model == 4 * (25 * 100 + 25 * 10) + 2 * 25 * 55 + 4 * 25
    assert plan.batch_features == 2 * 100 * 10 * 12 == 24_000
    assert plan.samples_per_gaussian == 4
    # a batch is 8 samples per Gaussian; grouped to d = 10
    assert plan.update_temporaries == 2 * 2 * 10 * 10 * 25 + 8 * 25 * (10 * 10 + 100) + 4 * 25 * (100 + 55)


def test_plan_shared_gaussian_holds_the_whole_batch_centred():
    # 40 000 samples per batch: more than a group (d = 10), so updated as they come, ungrouped
    plan = plan_memory(gaussians=1, d=10, feature_positions=10_000, batch_size=4)
    assert plan.statistics == 8 * (55 + 20)
    assert plan.update_temporaries == 2 * 4 * 10_000 * 10 + 8 * (4 * 10_000 * 10 + 100) + 4 * (100 + 55)


def test_plan_update_chunk_caps_temporaries():
    # a group of 6 samples (2**27 bytes of float16 at 10 × 10⁶ values each), then chunks of 2**27
    # bytes of float64 over d·(d + samples) values per position
    plan = plan_memory(gaussians=1_000_000, d=10, feature_positions=1_000_000, batch_size=1)
    group = 2**27 // (2 * 10 * 1_000_000)
    chunk = 2**27 // (8 * 10 * (10 + group))
    assert group == 6 and chunk < 1_000_000
    # the transposed copy (2 · 6 · 10 · 10⁶ B = 120 MB) is within TRANSPOSE_MAX_BYTES (256 MiB)
    assert plan.update_temporaries == (2 * 2 * group * 10 * 1_000_000 + 8 * chunk * (group * 10 + 100)
                                       + 4 * chunk * 155)
    big = plan_memory(gaussians=1_000_000, d=300, feature_positions=1_000_000, batch_size=1)
    assert big.finalize - 4 * 1_000_000 * 300 * 301 // 2 == 8 * 3 * (2**25 // (8 * 300 * 300)) * 300 * 300 <= 3 * 2**25


def test_plan_calibration():
    # downdate (a fold of ≤ d samples per Gaussian): the unrounded packed float32 model, the cached
    # float16 embeddings (at least 256 MiB assumed) and one whitened 32 MiB chunk with its whitener
    plan = plan_memory(100, 10, 100, 1, calibration_folds=5)
    unrounded = 4 * 100 * 55
    assert plan.downdate and plan.calibration == unrounded + 256 * 2**20 + 2 * 2**25
    with_images = plan_memory(100, 10, 100, 1, calibration_folds=5, n_images=12)
    assert with_images.embedding_cache == 12 * 100 * 10 * 2  # float16, all images
    assert with_images.calibration == unrounded + 256 * 2**20 + 2 * 2**25
    # many images: only as many as 160 MiB holds are held out (2000 bytes each), and folds of more
    # samples than d = 10 are refitted: a fold's sums and model next to the fit's
    huge = plan_memory(100, 10, 100, 1, calibration_folds=5, n_images=10**7)
    assert huge.embedding_cache == (160 * 2**20 // 2000) * 2000 and not huge.downdate
    assert huge.calibration == 60_000 + 44_000 + 256 * 2**20
    assert huge.peak == 60_000 + huge.finalize + huge.model + huge.calibration + huge.embedding_cache
    assert plan_memory(100, 10, 100, 1, calibration_folds=1, n_images=12).calibration == 0


def test_held_out_images_all_while_they_fit_then_a_bounded_subset():
    assert held_out_images(300, 1000, 512_000) == 300  # 300 kB of 512 kB
    assert held_out_images(600, 1000, 512_000) == 512  # a subset of what fits
    assert held_out_images(10**6, 1000, 512_000) == 512  # flat in the number of images
    assert held_out_images(600, 1000, 63_000) == 100  # < 100 images fit: 100 held out (extracted again)
    assert held_out_images(600, 1000, 100_000) == 100
    assert held_out_images(40, 1000, 10_000) == 40  # few images, none fit: all held out, extracted again


def test_held_out_cache_grows_to_the_minimum_subset_only_beyond_it():
    from padim.memory import FIT_CACHE_MAX_BYTES, HELD_OUT_MIN_IMAGES, held_out_cache_bytes

    large = 4 * 2**20  # 100 × 4 MiB = 400 MiB > 160 MiB
    assert held_out_cache_bytes(568, large) == HELD_OUT_MIN_IMAGES * large
    assert held_out_cache_bytes(568, 1000) == FIT_CACHE_MAX_BYTES
    assert held_out_cache_bytes(10, 50 * 2**20) == FIT_CACHE_MAX_BYTES  # few huge images: unchanged


def test_plan_positional_signature_unchanged():
    plan = plan_memory(3136, 100, 3136, 16, 5)  # as PaDiM.plan calls it
    assert isinstance(plan, MemoryPlan) and plan.gaussians == 3136 and plan.calibration > 0


@pytest.mark.parametrize("text, expected", [
    ("6G", 6 * GIB), ("6g", 6 * GIB), ("6GB", 6 * GIB), ("6 GiB", 6 * GIB), ("6Gi", 6 * GIB),
    ("500M", 500 * MIB), ("1.5GiB", int(1.5 * GIB)), ("2e9", 2_000_000_000), ("1024", 1024),
    ("512k", 512 * 1024), ("1T", 2**40), (" 3.0e1M ", 30 * MIB), (4096, 4096), (2.5e9, 2_500_000_000),
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "6X", "G", "-1G", "6iB", "1.2.3G", "6 G B", "nan", "0", "0.5", "1e400", True])
def test_parse_memory_rejects_junk(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_memory(text)


def _peak(grid_h, grid_w, cell, d, batch=1):
    gaussians = 1 if cell == "image" else math.ceil(grid_h / cell) * math.ceil(grid_w / cell)
    return plan_memory(gaussians, d, grid_h * grid_w, batch).peak


def test_choose_finest_fitting_cell():
    h, w, d = 100, 80, 50
    peaks = {c: _peak(h, w, c, d) for c in (1, 2, 4, 8, 16, "image")}
    assert peaks[1] > peaks[2] > peaks[4] > peaks[8]
    assert choose_granularity(h, w, d, 1, peaks[1]) [:2] == (1, d)
    cell, dim, plan = choose_granularity(h, w, d, 1, peaks[4])
    assert (cell, dim) == (4, d) and plan.peak == peaks[4] and plan.gaussians == 25 * 20
    assert plan.feature_positions == h * w
    assert choose_granularity(h, w, d, 1, peaks[4] - 1)[0] == 8
    # candidate order does not matter; the finest is preferred
    assert choose_granularity(h, w, d, 1, peaks[4], candidates_cells=("image", 8, 4, 16))[0] == 4


def test_the_budget_counts_the_process_and_a_backbone_pass_beside_the_gaussians():
    """``total`` = process + the larger of the Gaussians' peak and (statistics + cached embeddings
    + one backbone pass): the pass runs before a batch's features and update temporaries exist."""
    plan = MemoryPlan(gaussians=1, d=1, batch_size=1, feature_positions=1, statistics=100, finalize=10, model=5,
                      batch_features=30, calibration=0, update_temporaries=20, embedding_cache=7,
                      backbone_pass=40, process=1000)
    assert plan.peak == 100 + 30 + 20 + 7
    assert plan.total == 1000 + 157  # the pass (100 + 7 + 40 = 147) fits inside the fit loop's peak
    assert MemoryPlan(**{**plan.__dict__, "backbone_pass": 90}).total == 1000 + 100 + 7 + 90
    h, w, d = 100, 80, 50
    peaks = {c: _peak(h, w, c, d) for c in (1, 2, 4)}
    # the budget that held 4×4 cells alone holds 8×8 cells once 1 MiB of process sits beside them
    assert choose_granularity(h, w, d, 1, peaks[4])[0] == 4
    cell, _, chosen = choose_granularity(h, w, d, 1, peaks[4], process=MIB)
    assert cell == 8 and chosen.process == MIB and chosen.total <= peaks[4]
    assert choose_granularity(h, w, d, 1, peaks[4] + MIB, process=MIB)[0] == 4


def test_choose_shared_gaussian_when_cells_do_not_fit():
    h = w = 64
    d = 20
    budget = _peak(h, w, "image", d)
    assert all(_peak(h, w, c, d) > budget for c in (1, 2, 4, 8, 16))
    assert choose_granularity(h, w, d, 1, budget)[:2] == ("image", d)


def test_choose_shrinks_d_only_when_no_cell_fits():
    h, w = 200, 200
    smallest_at_100 = min(_peak(h, w, c, 100) for c in (1, 2, 4, 8, 16, "image"))
    budget = smallest_at_100 - 1
    cell, dim, plan = choose_granularity(h, w, 100, 1, budget, d_candidates=[20, 50, 80, 200])
    assert dim == 80 and plan.peak <= budget
    assert cell == next(c for c in (1, 2, 4, 8, 16, "image") if _peak(h, w, c, 80) <= budget)
    with pytest.raises(MemoryError):
        choose_granularity(h, w, 100, 1, budget)  # no d_candidates: refuse


def test_choose_refuses_with_numbers_in_message():
    with pytest.raises(MemoryError) as info:
        choose_granularity(968, 800, 100, 16, 1 * GIB, d_candidates=[50])
    message = str(info.value)
    assert "\n" not in message
    assert fmt_bytes(GIB) in message  # the budget given
    smallest = min(_peak(968, 800, c, dim, batch=16) for c in (1, 2, 4, 8, 16, "image") for dim in (100, 50))
    assert fmt_bytes(smallest) in message  # what the smallest option needs
    assert "d=50" in message and "fewer dims" in message and "smaller image scale" in message


def test_choose_rejects_bad_budget():
    with pytest.raises(ValueError, match="max_memory_bytes"):
        choose_granularity(10, 10, 5, 1, 0)
