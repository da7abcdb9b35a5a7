"""Fit and score under torchrun: 2 gloo processes on the CPU against one process."""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from padim import PaDiM
from padim import distributed
from padim.gaussian import GaussianStats
from padim.results import read_journal
from padim.workflows import score_folder

ROOT = Path(__file__).resolve().parents[1]
# --channels, not --d: Python 3.11 torchrun takes --d for an abbreviation of its --duplicate-* options.
FIT_OPTIONS = ["--image-size", "64", "--channels", "24", "--folds", "3", "--device", "cpu", "--workers", "0",
               "--batch-size", "4", "--quiet", "--config", "fixed"]


def image(seed: int) -> np.ndarray:
    """A smooth product (gradient, dark square) with sensor noise, uint8 64×64×3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64.0
    img = np.stack([0.3 + 0.4 * x, 0.6 - 0.3 * y, 0.4 + 0.2 * x * y], axis=2)
    img[16:28, 36:48] = (0.15, 0.2, 0.25)
    img += rng.normal(0, 0.02, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_data")
    train, test = root / "train", root / "test"
    train.mkdir()
    test.mkdir()
    for i in range(11):
        Image.fromarray(image(i)).save(train / f"good_{i:02d}.png")
    (train / "good_05b.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # skipped by whichever rank reads it
    for i in range(9):
        Image.fromarray(image(100 + i)).save(test / f"t_{i:02d}.png")
    return root


def free_port() -> int:
    """A TCP port nobody listens on now: each torchrun gets its own rendezvous port, so a run never
    meets the lingering socket of the one before it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(args, nproc=2, env_extra=None, check=True):
    """``python -m torch.distributed.run --nproc-per-node N -m padim ARGS`` with this worktree first."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env_extra or {}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), "-m", "padim", *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode not in (0, 1):
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return done


def single_fit(train, cell):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable image
        return PaDiM(image_size=64, d=24, calibration_folds=3, device="cpu", workers=0, batch_size=4,
                     cell=cell, config="fixed").fit(train)


def test_without_a_process_group_nothing_is_sharded():
    assert not distributed.active()
    assert distributed.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert distributed.all_gather("x") == ["x"]


def test_reshift_keeps_the_moments():
    """Sums re-expressed about another shift give the same mean and covariance (numpy reference)."""
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, size=(30, 4, 3))
    stats = GaussianStats(3, 4).update(torch.from_numpy(x))
    before = stats.covariance().numpy()
    stats.reshift_(stats.shift + 1.5)
    np.testing.assert_allclose(stats.covariance().numpy(), before, rtol=1e-10)  # float64 re-expression
    for p in range(3):
        np.testing.assert_allclose(stats.mean()[p].numpy(), x[:, :, p].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats.covariance()[p].numpy(), np.cov(x[:, :, p].T), atol=1e-6)  # float32 products


@pytest.mark.parametrize("cell", [1, 8])
def test_two_process_fit_equals_one_process(data, tmp_path, cell):
    """cell 1 downdates the folds; cell 8 (4 images × 64 samples per Gaussian per fold > d) refits them."""
    out = tmp_path / "model.padim"
    done = launch(["fit", data / "train", "-o", out, "--cell", cell, *FIT_OPTIONS])
    # rank 1 reads the unreadable image (index 6 of 12), rank 0 knows of it: the global skipped list
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.count("skipped unreadable training image") == 1  # read by one rank only: sharded
    assert out.exists()
    two = PaDiM.load(out, device="cpu", workers=0)
    one = single_fit(data / "train", cell)
    assert two.n_train_ == one.n_train_ == 11
    np.testing.assert_allclose(two.calibration_scores_, one.calibration_scores_, rtol=1e-4)
    assert two.calibrator_.threshold_ == pytest.approx(one.calibrator_.threshold_, rel=1e-4)
    tests = sorted((data / "test").glob("*.png"))
    np.testing.assert_allclose(two.score_samples(tests), one.score_samples(tests), rtol=1e-4)


SCORE_OPTIONS = ["--device", "cpu", "--workers", "0", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def scored_once(data, tmp_path_factory):
    """A model, and one process's TSV, heatmaps and maps of the test images."""
    root = tmp_path_factory.mktemp("scored_once")
    model = single_fit(data / "train", 1)
    model.save(root / "model.padim")
    model = PaDiM.load(root / "model.padim", device="cpu", workers=0, batch_size=2)
    score_folder(model, data / "test", root / "one.tsv", heatmaps=root / "heat", save_maps=root / "maps")
    return root


def test_two_process_score_equals_one_process(data, scored_once, tmp_path):
    out = tmp_path / "two.tsv"
    done = launch(["score", scored_once / "model.padim", data / "test", "-o", out, "--heatmaps", tmp_path / "heat",
                   "--save-maps", tmp_path / "maps", *SCORE_OPTIONS])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scored 9 images" in done.stdout  # rank 0 reports every rank's images
    one = pd.read_csv(scored_once / "one.tsv", sep="\t")
    two = pd.read_csv(out, sep="\t")
    assert list(two["path"]) == sorted(p.name for p in (data / "test").glob("*.png"))
    pd.testing.assert_frame_equal(two, one, rtol=1e-5)
    # the same model file and, for 9 images in batches of 2 split 4 + 5, the same batches: the same bytes
    assert out.read_bytes() == (scored_once / "one.tsv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "heat").iterdir()) == sorted(p.name for p in (scored_once / "heat").iterdir())
    for path in sorted((scored_once / "maps").iterdir()):
        np.testing.assert_allclose(np.load(tmp_path / "maps" / path.name), np.load(path), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "two.tsv.meta.json").read_text())["rows"] == 9
    assert not list(tmp_path.glob("two.tsv.partial*"))


@pytest.mark.parametrize("resume_ranks", [2, 1])
def test_resume_after_a_killed_rank(data, scored_once, tmp_path, resume_ranks):
    """A 2-rank run whose rank 1 is SIGKILLed resumes, with 2 ranks or with one process."""
    out = tmp_path / "scores.tsv"
    args = ["score", scored_once / "model.padim", data / "test", "-o", out, *SCORE_OPTIONS]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-port", str(free_port()),
                             str(ROOT / "tests" / "distributed_killed_rank.py"), *map(str, args)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0
    assert not out.exists()
    journals = sorted(p.name for p in tmp_path.glob("scores.tsv.partial.rank*"))
    assert journals == ["scores.tsv.partial.rank0", "scores.tsv.partial.rank1"]
    kept = read_journal(tmp_path / "scores.tsv.partial.rank1")[1]
    assert len(kept) == 2  # rank 1 died after its first batch of 2 rows
    if resume_ranks == 2:
        done = launch([*args, "--resume"])
        assert done.returncode == 0, done.stderr[-2000:]
        assert "already done" in done.stdout
    else:
        model = PaDiM.load(scored_once / "model.padim", device="cpu", workers=0, batch_size=2)
        summary = score_folder(model, data / "test", out, resume=True)
        assert summary.skipped >= 2 and summary.scored + summary.skipped == 9
    one = pd.read_csv(scored_once / "one.tsv", sep="\t")
    # values, not bytes: the resumed images go through the backbone in other batches (other rounding)
    pd.testing.assert_frame_equal(pd.read_csv(out, sep="\t"), one, rtol=1e-5)
    assert not list(tmp_path.glob("scores.tsv.partial*"))


def _fit_in_group(rank, world, init_file, train, params, result_file, rank1_params=None):
    """One rank of an API fit inside a process group its caller initialised (gloo, file rendezvous)."""
    import pickle

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PaDiM(**(rank1_params if rank1_params and rank == 1 else params)).fit(train)
        if rank == 0:
            Path(result_file).write_bytes(pickle.dumps(
                (model.n_train_, model.skipped_, model.held_out_, model.calibration_scores_,
                 model.calibrator_.threshold_, model.gaussian_.mean.numpy(), model.auto_choice_)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("extra", [dict(cell="image"), dict(cell=2, tile=48, overlap=8),
                                   dict(d=24, config="auto", budget="1000x")],
                         ids=["shared-gaussian", "tiled", "auto-configuration"])
def test_api_fit_in_an_initialised_group(data, tmp_path, extra):
    import pickle

    import torch.multiprocessing as mp

    params = {**dict(image_size=64, calibration_folds=3, device="cpu", workers=0, batch_size=4, config="fixed"), **extra}
    result = tmp_path / "rank0.pickle"
    mp.spawn(_fit_in_group, args=(2, str(tmp_path / "rendezvous"), data / "train", params, str(result)),
             nprocs=2, join=True)
    n_train, skipped, held_out, scores, threshold, mean, choice = pickle.loads(result.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = PaDiM(**params).fit(data / "train")
    assert one.geometry_.tiled == ("tile" in extra)
    assert choice == one.auto_choice_  # None unless auto: then the same candidate on 2 ranks as on 1
    assert n_train == one.n_train_ == 11
    assert skipped == one.skipped_  # rank 1 read the bad file; rank 0 knows it
    assert held_out == one.held_out_
    np.testing.assert_allclose(scores, one.calibration_scores_, rtol=1e-4)
    assert threshold == pytest.approx(one.calibrator_.threshold_, rel=1e-4)
    np.testing.assert_allclose(mean, one.gaussian_.mean.numpy(), rtol=1e-4, atol=1e-5)


def test_ranks_that_decide_different_models_are_refused(data, tmp_path):
    import torch.multiprocessing as mp

    params = dict(image_size=64, calibration_folds=0, device="cpu", workers=0, batch_size=4, cell=1)
    with pytest.raises(mp.ProcessRaisedException, match="ranks decided different models"):
        mp.spawn(_fit_in_group, args=(2, str(tmp_path / "rendezvous"), data / "train", params,
                                      str(tmp_path / "unused"), dict(params, image_size=96)), nprocs=2, join=True)
