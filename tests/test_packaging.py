"""The wheel: it carries ``padim/__main__.py``, the demo sample and the licence, and an installed
copy finds its sample inside itself when run from outside the repository. Also ``python -m padim``
behaves as the console script. (The full demo from a wheel runs in ``.ci/run``: it takes a minute.)

The wheel is built offline from a clean copy of the sources (no stale ``build/``), with
``--no-build-isolation``: the test environment's setuptools (>= 70.1, in the ``test`` extra) builds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "padim" / "sample_data" / "cookies_small"
SOURCES = ["padim", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "requirements.txt"]


def _env_without_repo(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(dist.glob("padim-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return site


def test_wheel_contains_main_sample_and_licence(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        licences = [n for n in names if n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")]
        assert len(licences) == 1, sorted(n for n in names if "dist-info" in n)
        assert archive.read(licences[0]) == (REPO / "LICENSE").read_bytes()
    assert "padim/__main__.py" in names and "padim/cli.py" in names
    sample_files = {f"padim/sample_data/cookies_small/{p.relative_to(SAMPLE).as_posix()}"
                    for p in SAMPLE.rglob("*") if p.is_file()}
    assert len([n for n in sample_files if "/train/good/" in n and n.endswith(".jpg")]) == 31
    assert "padim/sample_data/cookies_small/LICENSE.md" in sample_files
    assert sample_files <= names, sorted(sample_files - names)[:5]
    assert not any(n.startswith(("tests/", "tools/", "datasets/", "benchmarks/")) for n in names)


def test_installed_copy_finds_its_own_sample_from_outside_the_repo(installed, tmp_path):
    code = ("import padim, padim.workflows as w; d = w.default_demo_data(); "
            "print(padim.__file__); print(d); print(len(list((d / 'train' / 'good').glob('*.jpg'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=_env_without_repo(PYTHONPATH=str(installed)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    module_file, data_dir, n_train = proc.stdout.split("\n")[:3]
    site = installed.resolve()
    assert Path(module_file).resolve().is_relative_to(site)
    assert Path(data_dir).resolve().is_relative_to(site) and Path(data_dir).name == "cookies_small"
    assert int(n_train) == 31

    proc = subprocess.run([sys.executable, "-m", "padim", "demo", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, env=_env_without_repo(PYTHONPATH=str(installed)), timeout=120)
    assert proc.returncode == 0 and "usage: padim demo" in proc.stdout and "datasets/" not in proc.stdout


CONSOLE_SCRIPT = "import sys; from padim.cli import main; sys.exit(main())"  # what the entry point runs


@pytest.mark.parametrize("args", [["--version"], [], ["fit", "no/such/folder", "-o", "m.padim"],
                                  ["score", "--bogus-option"]])
def test_python_m_padim_matches_the_console_script(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    via_m = subprocess.run([sys.executable, "-m", "padim", *args], cwd=tmp_path, capture_output=True,
                           text=True, env=env, timeout=300)
    via_script = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, *args], cwd=tmp_path, capture_output=True,
                                text=True, env=env, timeout=300)
    assert via_m.returncode == via_script.returncode
    assert via_m.stdout == via_script.stdout and via_m.stderr == via_script.stderr
    expected_rc = {"--version": 0}.get(args[0] if args else None, 2)
    assert via_m.returncode == expected_rc, via_m.stderr
