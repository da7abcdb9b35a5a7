"""Probability TSVs: csv-quoted rows, a provenance record beside them, and a resumable journal.

``padim score … -o OUT`` writes three files:

- ``OUT``: the TSV. "default" has a header (path, score, probability, label); "signate" has
  none (file name, probability), the contest layout. Written with the csv module (tab,
  minimal quoting, "\\n" line ends) in UTF-8 without BOM, so any file name (tabs, newlines,
  quotes, leading spaces, …) reads back exactly with ``csv.reader`` or ``pandas.read_csv``.
  Names that are not valid UTF-8 keep their bytes (Python's ``surrogateescape``).
- ``OUT.meta.json``: what produced ``OUT`` (model fingerprint, threshold, format) and the
  SHA-256 of its bytes, written right after it. A TSV that does not match its record (edited,
  or a run stopped between the two renames) is never resumed. The TSV itself holds no comment
  lines: contest readers and pandas would take them for rows.
- ``OUT.partial`` while a run goes on: one JSON object per line, first the provenance, then one
  per scored image, flushed as they come. JSON escapes every character of a name, so a line
  cut off by a kill is the last one, is recognised (no newline) and is dropped: that image is
  scored again.

``--resume`` keeps earlier rows only when ``OUT`` and the journal were produced by the same
model, threshold and format as this run, and refuses otherwise, changing nothing.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from . import __version__
from .io import atomic_output, atomic_write_bytes, naming_path

FORMATS = ("default", "signate")
HEADER = ("path", "score", "probability", "label")
LABELS = ("OK", "NG")
ENCODING, ENCODING_ERRORS = "utf-8", "surrogateescape"  # file names are bytes on POSIX
RECORD_VERSION = 1  # of OUT.meta.json and of the journal's first line
_TSV = dict(delimiter="\t", lineterminator="\n")
_START_OVER = "score again without --resume to replace it, or write to another -o"


@dataclass
class Row:
    path: str  # relative to the scored input, with forward slashes
    score: float  # NaN for rows read back from a signate file
    probability: float
    label: str  # "OK" or "NG" ("" for rows read back from a signate file)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown TSV format {fmt!r}; choose from: {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------- writing TSVs

def _needs_quotes_everywhere(record) -> bool:
    # The csv module leaves a lone "\r" unquoted when lines end in "\n", and readers then end
    # the row there; pandas drops a BOM at the start of a file, so a first name starting with
    # U+FEFF must not come first unquoted.
    return any("\r" in field for field in record) or record[0].startswith("\ufeff")


def _write_records(handle, records) -> None:
    minimal = csv.writer(handle, quoting=csv.QUOTE_MINIMAL, **_TSV)
    quoted = csv.writer(handle, quoting=csv.QUOTE_ALL, **_TSV)
    for record in records:
        (quoted if _needs_quotes_everywhere(record) else minimal).writerow(record)


def format_rows(rows: list[Row], fmt: str) -> str:
    """The TSV text for ``rows`` in sorted path order."""
    _check_format(fmt)
    rows = sorted(rows, key=lambda r: r.path)
    if fmt == "signate":
        records = [(r.path, f"{r.probability:.6f}") for r in rows]
    else:
        records = [HEADER] + [(r.path, f"{r.score:.6g}", f"{r.probability:.6f}", r.label) for r in rows]
    text = io.StringIO()
    _write_records(text, records)
    return text.getvalue()


def write_error_list(path: Path, failed: list[tuple[str, str]]) -> None:
    """``OUT.errors.tsv``: file name and message of each unreadable image, quoted like the TSV."""
    text = io.StringIO()
    _write_records(text, failed)
    atomic_write_bytes(path, text.getvalue().encode(ENCODING, ENCODING_ERRORS))


# ----------------------------------------------------------------------------- reading TSVs

def _row_from_fields(fields: list[str]) -> Row:
    if len(fields) == 2:  # signate: file name and probability only
        return Row(fields[0], math.nan, float(fields[1]), "")
    if len(fields) == 4 and fields[3] in LABELS:
        return Row(fields[0], float(fields[1]), float(fields[2]), fields[3])
    raise ValueError


def read_rows(path: Path) -> list[Row]:
    """Rows of a finished TSV of either format, in file order."""
    rows = []
    line = next_line = 1
    with open(path, encoding=ENCODING, errors=ENCODING_ERRORS, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", strict=True)
        try:
            for fields in reader:
                line, next_line = next_line, reader.line_num + 1  # a quoted name may span lines
                if not fields or (line == 1 and tuple(fields) == HEADER):
                    continue
                rows.append(_row_from_fields(fields))
        except (ValueError, csv.Error):
            raise ValueError(f"'{path}' line {line}: not a padim result row") from None
    return rows


# ----------------------------------------------------------------------------- provenance

@dataclass(frozen=True)
class Provenance:
    """What produced a result file: the model's fingerprint, the threshold in force, the format."""

    model: str  # padim.fingerprint.model_fingerprint
    threshold: float | None  # the score threshold labels used (the model's own or an override)
    fmt: str

    def __post_init__(self):
        _check_format(self.fmt)

    def as_dict(self) -> dict:
        return {"model": self.model, "threshold": self.threshold, "format": self.fmt}

    @classmethod
    def from_dict(cls, data) -> "Provenance":
        threshold = data["threshold"]
        if not isinstance(data["model"], str) or not (
                threshold is None or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool))):
            raise ValueError("bad model or threshold")
        return cls(data["model"], None if threshold is None else float(threshold), data["format"])


def check_same_provenance(source: Path, recorded: Provenance, wanted: Provenance) -> None:
    """Refuse (one-line ValueError: what differs, what to do) unless ``recorded == wanted``."""
    differences = []
    if recorded.model != wanted.model:
        differences.append(f"another model (fingerprint {recorded.model[:12]}, this model {wanted.model[:12]})")
    if recorded.threshold != wanted.threshold:
        differences.append(f"threshold {recorded.threshold!r} (this run: {wanted.threshold!r})")
    if recorded.fmt != wanted.fmt:
        differences.append(f"format {recorded.fmt} (this run: {wanted.fmt})")
    if not differences:
        return
    flags = []
    if recorded.model == wanted.model:  # the same model: the earlier options resume it
        if recorded.threshold != wanted.threshold and recorded.threshold is not None:
            flags.append(f"--threshold {recorded.threshold!r}")
        if recorded.fmt != wanted.fmt:
            flags.append(f"--format {recorded.fmt}")
    hint = f"resume with {' '.join(flags)}, or " if flags else ""
    raise ValueError(f"'{source}' was written with {' and '.join(differences)}; {hint}{_START_OVER}")


def meta_path(out: Path) -> Path:
    """The provenance record beside a TSV: ``OUT.meta.json``."""
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


def write_output(out: Path, rows: list[Row], provenance: Provenance) -> None:
    """Replace ``OUT`` atomically, then its record ``OUT.meta.json`` (which names OUT's hash)."""
    data = format_rows(rows, provenance.fmt).encode(ENCODING, ENCODING_ERRORS)
    record = {"padim_result": RECORD_VERSION, "padim_version": __version__, **provenance.as_dict(),
              "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(out, data)
    atomic_write_bytes(meta_path(out), (json.dumps(record, indent=2) + "\n").encode())


def read_output_provenance(out: Path) -> Provenance:
    """What produced a finished ``OUT``, from its record; ValueError if that cannot be told."""
    meta = meta_path(out)
    if not meta.is_file():
        raise ValueError(f"'{out}' has no record of the model that wrote it ('{meta.name}' is missing: "
                         f"written by an older padim, or not by padim); {_START_OVER}")
    try:
        record = json.loads(meta.read_bytes())
        if record.get("padim_result") != RECORD_VERSION:
            raise ValueError("unknown record version")
        provenance = Provenance.from_dict(record)
        sha256 = record["sha256"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"'{meta}': not a padim result record ({exc}); {_START_OVER}") from None
    if hashlib.sha256(Path(out).read_bytes()).hexdigest() != sha256:
        raise ValueError(f"'{out}' does not match its record '{meta.name}' (changed since padim wrote it, "
                         f"or a run was stopped while finishing); {_START_OVER}")
    return provenance


# ----------------------------------------------------------------------------- the journal

def _journal_header(provenance: Provenance) -> str:
    return json.dumps({"padim_journal": RECORD_VERSION, **provenance.as_dict()}) + "\n"


def _journal_line(row: Row) -> str:
    """One JSON object (ASCII, full float precision, no raw newline whatever the name)."""
    score = None if math.isnan(row.score) else row.score
    return json.dumps({"path": row.path, "score": score, "probability": row.probability, "label": row.label}) + "\n"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _journal_row(line: bytes) -> Row | None:
    """The row of a journal line, or None for a damaged one."""
    try:
        record = json.loads(line)
        path, score, probability, label = (record[k] for k in HEADER)
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(path, str) and path and (score is None or _number(score)) and _number(probability)
            and label in (*LABELS, "")):
        return None
    return Row(path, math.nan if score is None else float(score), float(probability), label)


def read_journal(path: Path) -> tuple[Provenance | None, list[Row]]:
    """Provenance and rows of a ``.partial`` journal, in the order written.

    Only lines that end in a newline count: a kill can cut the last one, whose image is then
    scored again. Damaged row lines are skipped the same way. A journal without one complete
    line holds nothing (None, []); one whose first line is not a padim journal header (an older
    padim's, or a foreign file) is refused with a ValueError.
    """
    lines = Path(path).read_bytes().split(b"\n")[:-1]  # what follows the last newline is unfinished
    if not lines:
        return None, []
    try:
        header = json.loads(lines[0])
        if header.get("padim_journal") != RECORD_VERSION:
            raise ValueError
        provenance = Provenance.from_dict(header)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"'{path}': not a padim journal (or one from an older padim); {_START_OVER}") from None
    rows = [row for row in map(_journal_row, lines[1:]) if row is not None]
    return provenance, rows


def journal_path(out: Path, rank: int | None = None) -> Path:
    """``OUT.partial``, or ``OUT.partial.rank{r}`` for rank r of a distributed run."""
    out = Path(out)
    return out.with_name(out.name + ".partial" + ("" if rank is None else f".rank{rank}"))


def journal_paths(out: Path) -> list[Path]:
    """Every journal of ``OUT`` present: one process's, then the ranks' in rank order."""
    single = journal_path(out)
    ranks = sorted(Path(out).parent.glob(glob.escape(single.name) + ".rank*"),
                   key=lambda p: (len(p.name), p.name))
    return ([single] if single.is_file() else []) + [p for p in ranks if p.name[len(single.name) + 5:].isdigit()]


class ResultJournal:
    """Rows are appended (and flushed) to ``OUT.partial`` as they come; ``finish`` writes ``OUT``.

    ``OUT`` and its record are only ever replaced atomically, so an interrupted run never leaves
    a half file. With ``resume``, the rows of an existing ``OUT`` and ``OUT.partial`` are kept
    (and their images skipped) if both were produced with this ``provenance``; rows of images
    not in ``names`` (the images under the input now) are dropped. Any mismatch raises a
    ValueError before a file is touched.
    """

    def __init__(self, out: Path, provenance: Provenance, resume: bool, names: Iterable[str] | None = None,
                 rank: int | None = None, before_write=None):
        self.out = Path(out)
        self.provenance = provenance
        self.fmt = provenance.fmt
        self.partial = journal_path(self.out, rank)
        self.rows: dict[str, Row] = self._earlier_rows(names) if resume else {}
        if before_write is not None:  # e.g. a barrier: every rank has read the journals before any is rewritten
            before_write()
        with atomic_output(self.partial, "wb") as handle:  # the journal starts with what is already done
            handle.write(_journal_header(provenance).encode())
            handle.writelines(_journal_line(r).encode() for r in self.rows.values())
        self._handle = open(self.partial, "a", encoding=ENCODING)

    def _earlier_rows(self, names: Iterable[str] | None) -> dict[str, Row]:
        rows: dict[str, Row] = {}
        if self.out.is_file():
            check_same_provenance(self.out, read_output_provenance(self.out), self.provenance)
            rows.update((r.path, r) for r in read_rows(self.out))
        for partial in journal_paths(self.out):  # one process's and every rank's of any world size
            recorded, journal_rows = read_journal(partial)
            if recorded is not None:
                check_same_provenance(partial, recorded, self.provenance)
                rows.update((r.path, r) for r in journal_rows)  # later rows win
        if names is not None:
            wanted = set(names)
            rows = {path: row for path, row in rows.items() if path in wanted}
        return rows

    def done(self, path: str) -> bool:
        return path in self.rows

    def add(self, rows: list[Row]) -> None:
        with naming_path(self.partial):
            for row in rows:
                self.rows[row.path] = row
                self._handle.write(_journal_line(row))
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def finish(self, ranks: int = 0) -> Path:
        """Write ``OUT`` from this journal's rows and those of ranks ``0 … ranks − 1`` (a
        distributed run's, all finished), then remove every journal."""
        self._handle.close()
        for rank in range(ranks):
            partial = journal_path(self.out, rank)
            if partial != self.partial and partial.is_file():
                recorded, rows = read_journal(partial)
                if recorded is not None:
                    check_same_provenance(partial, recorded, self.provenance)
                    self.rows.update((r.path, r) for r in rows)
        write_output(self.out, list(self.rows.values()), self.provenance)
        for partial in journal_paths(self.out):
            partial.unlink(missing_ok=True)
        return self.out

    def close(self) -> None:
        """Stop without finishing: the journal stays for ``--resume``."""
        if not self._handle.closed:
            self._handle.close()
