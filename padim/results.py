"""Probability TSVs: written atomically, resumable after an interrupted run."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_output

FORMATS = ("default", "signate")
HEADER = ("path", "score", "probability", "label")


@dataclass
class Row:
    path: str  # relative to the scored input, with forward slashes
    score: float
    probability: float
    label: str  # "OK" or "NG"


def format_rows(rows: list[Row], fmt: str) -> str:
    """The TSV text for ``rows`` in sorted path order."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown TSV format {fmt!r}; choose from: {', '.join(FORMATS)}")
    rows = sorted(rows, key=lambda r: r.path)
    if fmt == "signate":
        return "".join(f"{r.path}\t{r.probability:.6f}\n" for r in rows)
    lines = ["\t".join(HEADER)] + [f"{r.path}\t{r.score:.6g}\t{r.probability:.6f}\t{r.label}" for r in rows]
    return "\n".join(lines) + "\n"


def _row_line(row: Row) -> str:
    return f"{row.path}\t{row.score!r}\t{row.probability!r}\t{row.label}\n"


def read_rows(path: Path) -> list[Row]:
    """Rows of a finished TSV of either format, or of a ``.partial`` journal."""
    rows = []
    journal = path.suffix == ".partial"
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip() or (number == 1 and fields[0] == HEADER[0]):
                continue
            if journal and (not line.endswith("\n") or len(fields) != 4):
                # A journal line cut off by a kill (journal lines always have 4 fields and end
                # in a newline; a cut one could otherwise parse as a 2-field signate row or a
                # row with a cut label): that image is simply scored again.
                continue
            try:
                if len(fields) == 2:  # signate: file name and probability only
                    rows.append(Row(fields[0], math.nan, float(fields[1]), ""))
                elif len(fields) == 4:
                    rows.append(Row(fields[0], float(fields[1]), float(fields[2]), fields[3]))
                else:
                    raise ValueError
            except ValueError:
                if journal:
                    continue  # a damaged journal line: that image is simply scored again
                raise ValueError(f"'{path}' line {number}: not a padim result row") from None
    return rows


class ResultJournal:
    """Rows are appended (and flushed) to ``OUT.partial`` as they come; ``finish`` writes ``OUT``.

    ``OUT`` itself is only ever replaced atomically, so an interrupted run never leaves a half
    file; with ``resume`` the rows of an existing ``OUT`` and ``OUT.partial`` are kept and their
    images skipped.
    """

    def __init__(self, out: Path, fmt: str, resume: bool):
        if fmt not in FORMATS:
            raise ValueError(f"unknown TSV format {fmt!r}; choose from: {', '.join(FORMATS)}")
        self.out = Path(out)
        self.fmt = fmt
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.rows: dict[str, Row] = {}
        if resume:
            for source in (self.out, self.partial):
                if source.is_file():
                    for row in read_rows(source):
                        self.rows[row.path] = row
        if fmt == "default" and any(math.isnan(r.score) for r in self.rows.values()):
            raise ValueError(f"'{self.out}' holds signate rows (probabilities only); resume it with "
                             f"--format signate, or score again without --resume")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.partial) as handle:  # start the journal with what is already done
            handle.writelines(_row_line(r) for r in self.rows.values())
        self._handle = open(self.partial, "a", encoding="utf-8")

    def done(self, path: str) -> bool:
        return path in self.rows

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            self.rows[row.path] = row
            self._handle.write(_row_line(row))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def finish(self) -> Path:
        self._handle.close()
        with atomic_output(self.out) as handle:
            handle.write(format_rows(list(self.rows.values()), self.fmt))
        self.partial.unlink(missing_ok=True)
        return self.out

    def close(self) -> None:
        """Stop without finishing: the journal stays for ``--resume``."""
        if not self._handle.closed:
            self._handle.close()
