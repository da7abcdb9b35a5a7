"""Shared by the scripts in tools/: one-line errors (exit code 2), a safe output folder, and
placing files (copy, symlink or hard link) without ever touching the input."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

try:
    from padim.io import IMAGE_EXTENSIONS, is_image_file
except ImportError:  # run by path from a clone without padim installed: use the clone's copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from padim.io import IMAGE_EXTENSIONS, is_image_file

__all__ = ["IMAGE_EXTENSIONS", "ToolError", "is_image_file", "list_images", "place", "prepare_output",
           "run_tool", "check_unique_stems"]

PLACE_MODES = ("copy", "symlink", "hardlink")


class ToolError(Exception):
    """A bad input or option, reported as one line with exit code 2."""


def run_tool(prog: str, main, argv=None) -> int:
    """Run ``main(argv)``; a ToolError or OSError becomes ``prog: error: ...`` on stderr, exit code 2."""
    try:
        return main(argv)
    except (ToolError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden parts skipped), sorted by relative path."""
    if not folder.is_dir():
        raise ToolError(f"'{folder}': no such folder")
    return sorted((p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def prepare_output(out: Path, inputs: list[Path], force: bool) -> Path:
    """Create ``out``; refuse one inside an input (or the reverse), and a non-empty one unless ``force``."""
    resolved = out.resolve()
    for source in inputs:
        src = source.resolve()
        if _inside(resolved, src) or _inside(src, resolved):
            raise ToolError(f"'{out}': the output folder must lie outside the input '{source}' and not contain it")
    if resolved.exists() and not resolved.is_dir():
        raise ToolError(f"'{out}': exists and is not a folder")
    if resolved.is_dir() and any(resolved.iterdir()) and not force:
        raise ToolError(f"'{out}': output folder is not empty (pass --force to write into it)")
    resolved.mkdir(parents=True, exist_ok=True)
    return resolved


def check_unique_stems(destinations: list[tuple[Path, Path]]) -> None:
    """Refuse two sources that would land on the same stem in one folder (masks are found by stem)."""
    seen: dict[tuple[Path, str], Path] = {}
    for source, dest in destinations:
        key = (dest.parent, dest.stem)
        if key in seen:
            raise ToolError(f"'{source}': name clash with '{seen[key]}' (both would be "
                            f"{dest.parent.name}/{dest.stem}.*); rename one of them")
        seen[key] = source


def place(source: Path, dest: Path, mode: str) -> None:
    """Put ``source`` at ``dest`` by copying (metadata kept), an absolute symlink or a hard link."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()  # only reachable with --force: an earlier output of the same name
    if mode == "copy":
        shutil.copy2(source, dest)
    elif mode == "symlink":
        dest.symlink_to(source.resolve())
    elif mode == "hardlink":
        os.link(source, dest)
    else:
        raise ToolError(f"unknown mode {mode!r} (expected one of {', '.join(PLACE_MODES)})")
