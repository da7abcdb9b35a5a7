"""Where a run's per-image files (heatmap PNGs, ``.npy`` maps) go, so that none replaces another
or an input image.

An image's file is its relative name with the suffix replaced (``crack/007.jpg`` →
``crack/007.png``). Two images that would share one (``a.png`` and ``a.jpg``; or ``A.jpg`` and
``a.bmp``, one file on a case-insensitive disk) keep their own suffix instead (``a.png.png``,
``a.jpg.png``), and a clash left after that gets a counter (``a.jpg.2.png``). Names depend on the
whole list only, so ``--resume`` and every torchrun rank compute the same ones.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath


def artefact_names(names: list[str], suffix: str) -> list[str]:
    """One distinct relative name per image name (forward slashes), ending in ``suffix``."""
    plain = [PurePosixPath(name).with_suffix(suffix).as_posix() for name in names]
    shared = Counter(p.casefold() for p in plain)
    chosen = [name + suffix if shared[p.casefold()] > 1 else p for name, p in zip(names, plain)]
    taken: set[str] = set()
    out = []
    for name in chosen:
        unique, k = name, 2
        while unique.casefold() in taken:
            unique = f"{name[: -len(suffix)]}.{k}{suffix}"
            k += 1
        taken.add(unique.casefold())
        out.append(unique)
    return out


def check_inputs_kept(folder: Path, artefacts: list[str], inputs: list[Path], root: Path, option: str) -> None:
    """A ValueError, before anything is written, if ``folder`` is the input folder (or, for one input
    file, its folder: the files would replace or join the images scored next time) or one of the
    ``artefacts`` under it is an input image."""
    target = Path(folder).resolve()
    if target == (Path(root) if Path(root).is_dir() else Path(root).parent).resolve():
        raise ValueError(f"{option} '{folder}' is the input folder: its files would replace or join the "
                         f"images; give another folder (a subfolder of the input is skipped when scoring)")
    kept = {p.resolve() for p in inputs}
    for name in artefacts:
        path = (target / name).resolve()
        if path in kept:
            raise ValueError(f"{option} '{folder}': writing '{name}' would replace the input image '{path}'; "
                             f"give another folder")
