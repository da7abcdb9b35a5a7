"""Probability TSVs: formats, any file name read back by csv and pandas, the provenance record,
the resumable journal (cut anywhere by a kill), refusals to mix runs, atomic replacement."""

import csv
import hashlib
import json
import math

import pandas as pd
import pytest

from padim import results
from padim.results import (FORMATS, HEADER, Provenance, ResultJournal, Row, format_rows, meta_path, read_journal,
                           read_rows, write_error_list, write_output)

ROWS = [
    Row("sub/b.png", 12.345678912, 0.25, "OK"),
    Row("a.png", 101.5, 0.999999, "NG"),
    Row("sub/deeper/c.png", 3.0, 0.000123456, "OK"),
    Row("a_b.png", 50.25, 0.5, "NG"),
]
PROV = Provenance("a" * 32, 42.5, "default")
PROV_SIGNATE = Provenance("a" * 32, 42.5, "signate")
OTHER_MODEL = Provenance("b" * 32, 42.5, "default")

# Names a POSIX file system allows that break naive TSVs or naive readers.
HOSTILE_NAMES = [
    "tab\there.png",
    "new\nline.png",
    "carriage\rreturn.png",
    "crlf\r\nname.png",
    "\nleading newline.png",
    "trailing newline\n",
    "\r",
    " leading space.png",
    "trailing space.png ",
    "  ",
    '"quoted".png',
    'half"quote.png',
    '"',
    "it's.png",
    "back\\slash.png",
    "\\",
    "ünïcødé/日本語/画像.png",
    "\ufeffstarts with a BOM.png",
    "007",
    "1e5",
    "nan",
    "NA",
    "N/A",
    "null",
    "None",
    "#not a comment.png",
    "path",
    "sub/dir with spaces/x.png",
    "form\x0cfeed\x0bvtab\x1cfs\x85nel\u2028ls.png",
    'all\t"of\r\nit\\ "\t.png',
    "not utf-8 \udce9\udcff.png",  # bytes E9 FF, as os.listdir returns them
]


def hostile_rows():
    return [Row(name, 10.0 + k * 1.5, round(k / 40, 6), "NG" if k % 2 else "OK")
            for k, name in enumerate(HOSTILE_NAMES)]


def lines_of(path):
    return path.read_text(encoding="utf-8").splitlines()


def leftovers(folder):
    """Temporary files of atomic writes left behind in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def csv_records(path):
    """The file as Python's csv module reads it (opened as its documentation says)."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t"))


def pandas_table(path, fmt):
    """The file as pandas reads it (C engine, tab separator; names kept as text)."""
    if fmt == "default":
        return pd.read_csv(path, sep="\t", engine="c", dtype={"path": str}, keep_default_na=False,
                           encoding_errors="surrogateescape")
    return pd.read_csv(path, sep="\t", engine="c", header=None, names=["name", "probability"],
                       dtype={"name": str}, keep_default_na=False, encoding_errors="surrogateescape")


def snapshot(folder):
    """Every file in ``folder`` with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def finished(out, rows, provenance=PROV):
    journal = ResultJournal(out, provenance, resume=False)
    journal.add(rows)
    return journal.finish()


# ----------------------------------------------------------------------------- format_rows

def test_default_format_has_header_sorted_rows_and_four_columns():
    text = format_rows(ROWS, "default")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[0] == "path\tscore\tprobability\tlabel" == "\t".join(HEADER)
    body = [line.split("\t") for line in lines[1:]]
    assert [f[0] for f in body] == sorted(r.path for r in ROWS)
    assert all(len(f) == 4 for f in body)
    by_path = {f[0]: f for f in body}
    assert by_path["a.png"] == ["a.png", "101.5", "0.999999", "NG"]
    assert by_path["sub/b.png"][1:] == ["12.3457", "0.250000", "OK"]  # 6 significant digits, 6 decimals
    assert float(by_path["sub/deeper/c.png"][2]) == pytest.approx(0.000123, abs=1e-6)


def test_signate_format_is_file_name_and_probability_without_header():
    lines = format_rows(ROWS, "signate").splitlines()
    assert len(lines) == len(ROWS)
    fields = [line.split("\t") for line in lines]
    assert all(len(f) == 2 for f in fields)
    assert [f[0] for f in fields] == sorted(r.path for r in ROWS)
    assert dict(fields)["a_b.png"] == "0.500000"


def test_plain_names_are_not_quoted():
    assert '"' not in format_rows(ROWS, "default") + format_rows(ROWS, "signate")


def test_empty_rows_give_header_only_or_nothing():
    assert format_rows([], "default") == "path\tscore\tprobability\tlabel\n"
    assert format_rows([], "signate") == ""


def test_rows_do_not_need_to_be_given_sorted_and_input_is_not_changed():
    given = list(ROWS)
    format_rows(given, "default")
    assert given == ROWS


@pytest.mark.parametrize("fmt", ["csv", "Default", ""])
def test_unknown_format_is_a_clear_error(fmt, tmp_path):
    with pytest.raises(ValueError, match="unknown TSV format.*default, signate"):
        format_rows(ROWS, fmt)
    with pytest.raises(ValueError, match="unknown TSV format"):
        Provenance("a" * 32, 1.0, fmt)
    assert list(tmp_path.iterdir()) == []  # nothing written for a bad format


# ----------------------------------------------------------------------------- any file name

def test_every_name_is_distinct_and_some_are_not_utf8():
    assert len(set(HOSTILE_NAMES)) == len(HOSTILE_NAMES)
    with pytest.raises(UnicodeEncodeError):
        HOSTILE_NAMES[-1].encode("utf-8")


@pytest.mark.parametrize("fmt", FORMATS)
def test_csv_reader_reads_one_row_per_image_with_the_exact_name(tmp_path, fmt):
    rows = hostile_rows()
    out = finished(tmp_path / "scores.tsv", rows, Provenance("a" * 32, 42.5, fmt))
    records = csv_records(out)
    if fmt == "default":
        assert tuple(records[0]) == HEADER
        records = records[1:]
    assert [r[0] for r in records] == sorted(HOSTILE_NAMES)
    expected = {r.path: r for r in rows}
    for record in records:
        row = expected[record[0]]
        if fmt == "default":
            assert len(record) == 4
            assert float(record[1]) == pytest.approx(row.score, rel=1e-5)
            assert float(record[2]) == pytest.approx(row.probability, abs=1e-6)
            assert record[3] == row.label
        else:
            assert len(record) == 2
            assert float(record[1]) == pytest.approx(row.probability, abs=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pandas_reads_one_row_per_image_with_the_exact_name(tmp_path, fmt):
    rows = hostile_rows()
    out = finished(tmp_path / "scores.tsv", rows, Provenance("a" * 32, 42.5, fmt))
    table = pandas_table(out, fmt)
    names = list(table["path" if fmt == "default" else "name"])
    assert names == sorted(HOSTILE_NAMES)
    assert len(table) == len(rows)
    expected = {r.path: r for r in rows}
    assert table["probability"].dtype == float
    assert list(table["probability"]) == pytest.approx([expected[n].probability for n in names], abs=1e-6)
    if fmt == "default":
        assert list(table.columns) == list(HEADER)
        assert list(table["score"]) == pytest.approx([expected[n].score for n in names], rel=1e-5)
        assert list(table["label"]) == [expected[n].label for n in names]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_single_hostile_name_reads_back_exactly(tmp_path, fmt, name):
    """Alone in the file, the name is also its first bytes (a BOM there would be eaten)."""
    out = finished(tmp_path / "one.tsv", [Row(name, 5.0, 0.125, "OK")], Provenance("a" * 32, 42.5, fmt))
    table = pandas_table(out, fmt)
    assert list(table["path" if fmt == "default" else "name"]) == [name]
    records = csv_records(out)
    assert [r[0] for r in records] == (["path", name] if fmt == "default" else [name])
    assert read_rows(out)[0].path == name


def test_utf8_names_give_valid_utf8_without_bom(tmp_path):
    rows = [r for r in hostile_rows() if r.path != HOSTILE_NAMES[-1]]
    for fmt in FORMATS:
        out = finished(tmp_path / f"{fmt}.tsv", rows, Provenance("a" * 32, 42.5, fmt))
        data = out.read_bytes()
        data.decode("utf-8")  # strict
        assert not data.startswith(b"\xef\xbb\xbf")
        assert "日本語".encode("utf-8") in data


def test_a_name_that_is_not_utf8_keeps_its_bytes(tmp_path):
    out = finished(tmp_path / "s.tsv", [Row("caf\udce9.png", 1.0, 0.5, "OK")], PROV_SIGNATE)
    assert out.read_bytes() == b"caf\xe9.png\t0.500000\n"


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_rows_round_trips_every_name(tmp_path, fmt):
    rows = hostile_rows()
    out = finished(tmp_path / "scores.tsv", rows, Provenance("a" * 32, 42.5, fmt))
    back = {r.path: r for r in read_rows(out)}
    assert sorted(back) == sorted(HOSTILE_NAMES)
    for row in rows:
        assert back[row.path].probability == pytest.approx(row.probability, abs=1e-6)


def test_error_list_is_quoted_like_the_tsv(tmp_path):
    failed = [(name, f"cannot read image '{name}': broken") for name in HOSTILE_NAMES]
    write_error_list(tmp_path / "errors.tsv", failed)
    assert [tuple(r) for r in csv_records(tmp_path / "errors.tsv")] == failed


# ----------------------------------------------------------------------------- read_rows

def test_default_round_trip(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text(format_rows(ROWS, "default"), encoding="utf-8")
    back = {r.path: r for r in read_rows(path)}
    assert sorted(back) == sorted(r.path for r in ROWS)
    for row in ROWS:
        got = back[row.path]
        assert got.score == pytest.approx(row.score, rel=1e-5)
        assert got.probability == pytest.approx(row.probability, abs=1e-6)
        assert got.label == row.label


def test_signate_round_trip(tmp_path):
    path = tmp_path / "submit.tsv"
    text = format_rows(ROWS, "signate")
    path.write_text(text, encoding="utf-8")
    back = read_rows(path)
    assert [r.path for r in back] == sorted(r.path for r in ROWS)
    assert all(math.isnan(r.score) and r.label == "" for r in back)
    # written again, a signate file is reproduced byte for byte
    assert format_rows(back, "signate") == text


def test_signate_image_named_like_the_header_is_a_row(tmp_path):
    path = tmp_path / "submit.tsv"
    path.write_text("path\t0.250000\nx.png\t0.500000\n", encoding="utf-8")
    assert [r.path for r in read_rows(path)] == ["path", "x.png"]


def test_finished_file_with_a_bad_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "scores.tsv"
    text = format_rows(ROWS, "default")
    path.write_text(text + "x.png\tnot-a-number\t0.5\tOK\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"line {len(ROWS) + 2}: not a padim result row"):
        read_rows(path)
    path.write_text("just some text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        read_rows(path)
    # after a name spanning three lines, the line of the bad row is still right
    path.write_text('path\tscore\tprobability\tlabel\n"a\nb\nc"\t1\t0.5\tOK\nx\t1\t0.5\tMAYBE\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 5: not a padim result row"):
        read_rows(path)


def test_unterminated_quote_is_an_error(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text('"a.png\t0.5\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: not a padim result row"):
        read_rows(path)


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text(format_rows(ROWS, "default") + "\n\n", encoding="utf-8")
    assert len(read_rows(path)) == len(ROWS)


# ----------------------------------------------------------------------------- the provenance record

def test_finish_writes_a_record_with_the_provenance_and_the_tsv_hash(tmp_path):
    out = finished(tmp_path / "scores.tsv", ROWS)
    assert meta_path(out) == tmp_path / "scores.tsv.meta.json"
    record = json.loads(meta_path(out).read_text())
    assert record["model"] == "a" * 32 and record["threshold"] == 42.5 and record["format"] == "default"
    assert record["rows"] == len(ROWS)
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.tsv", "scores.tsv.meta.json"]


def test_the_threshold_is_recorded_exactly(tmp_path):
    threshold = 0.1 + 0.2  # 0.30000000000000004
    out = finished(tmp_path / "scores.tsv", ROWS, Provenance("a" * 32, threshold, "default"))
    assert ResultJournal(out, Provenance("a" * 32, threshold, "default"), resume=True).done("a.png")
    with pytest.raises(ValueError, match="threshold"):
        ResultJournal(out, Provenance("a" * 32, 0.3, "default"), resume=True)


# ----------------------------------------------------------------------------- the journal

def test_journal_is_a_header_then_one_json_object_per_row(tmp_path):
    journal = ResultJournal(tmp_path / "out.tsv", PROV, resume=False)
    journal.add(ROWS)
    journal.close()
    lines = journal.partial.read_bytes().split(b"\n")
    assert lines[-1] == b""  # every record ends in a newline
    header, *records = [json.loads(line) for line in lines[:-1]]
    assert header == {"padim_journal": 1, "model": "a" * 32, "threshold": 42.5, "format": "default"}
    assert [r["path"] for r in records] == [r.path for r in ROWS]
    assert [(r["score"], r["probability"], r["label"]) for r in records] == [
        (r.score, r.probability, r.label) for r in ROWS]  # exact floats, in the order added


def test_journal_lines_keep_full_precision(tmp_path):
    journal = ResultJournal(tmp_path / "out.tsv", PROV, resume=False)
    journal.add(ROWS)
    journal.close()
    assert read_journal(journal.partial) == (PROV, ROWS)


def test_journal_survives_every_name(tmp_path):
    rows = hostile_rows()
    journal = ResultJournal(tmp_path / "out.tsv", PROV, resume=False)
    journal.add(rows)
    journal.close()
    assert journal.partial.read_bytes().count(b"\n") == len(rows) + 1  # no raw newline inside a record
    assert read_journal(journal.partial) == (PROV, rows)
    resumed = ResultJournal(tmp_path / "out.tsv", PROV, resume=True)
    assert all(resumed.done(name) for name in HOSTILE_NAMES)
    resumed.finish()
    assert [r[0] for r in csv_records(tmp_path / "out.tsv")[1:]] == sorted(HOSTILE_NAMES)


def _killed_journal(tmp_path, provenance=PROV):
    """A journal of ROWS[:2] plus a last record with a nasty name; returns (path, size before it,
    the last record's bytes)."""
    journal = ResultJournal(tmp_path / "out.tsv", provenance, resume=False)
    journal.add(ROWS[:2])
    journal.close()
    size = journal.partial.stat().st_size
    last = Row('cut "here"\t\n\r\\ é.png', 7.25, 0.75, "NG")
    journal = ResultJournal(tmp_path / "out.tsv", provenance, resume=True)
    journal.add([last])
    journal.close()
    data = journal.partial.read_bytes()
    return journal.partial, data[:size], data[size:], last


def test_killed_journal_at_every_byte_of_its_last_record(tmp_path):
    """A kill can cut the last record anywhere: resume keeps the complete rows, scores the cut
    one again, never crashes, never takes a cut record for another row, never mixes models."""
    partial, before, last_record, last = _killed_journal(tmp_path)
    out = tmp_path / "out.tsv"
    assert len(last_record) > 40 and last_record.endswith(b"\n")
    for cut in range(len(last_record) + 1):
        partial.write_bytes(before + last_record[:cut])
        complete = cut == len(last_record)
        assert read_journal(partial) == (PROV, ROWS[:2] + [last] * complete), cut
        # another model must not resume it, and the journal is left as it was
        with pytest.raises(ValueError, match="another model"):
            ResultJournal(out, OTHER_MODEL, resume=True)
        assert partial.read_bytes() == before + last_record[:cut]
        journal = ResultJournal(out, PROV, resume=True)
        assert journal.done(ROWS[0].path) and journal.done(ROWS[1].path), cut
        assert journal.done(last.path) == complete, cut
        assert not journal.done(ROWS[2].path)
        # the journal was rewritten without the cut record, so appending keeps it well-formed
        journal.add([ROWS[2]] + ([] if complete else [last]))
        journal.close()
        assert read_journal(partial) == (PROV, ROWS[:2] + ([last, ROWS[2]] if complete else [ROWS[2], last])), cut
    journal = ResultJournal(out, PROV, resume=True)
    journal.finish()
    names = [r[0] for r in csv_records(out)[1:]]
    assert names == sorted([r.path for r in ROWS[:3]] + [last.path])  # each exactly once
    assert not partial.exists()


def test_journal_cut_in_its_header_holds_nothing(tmp_path):
    out = tmp_path / "out.tsv"
    partial = out.with_name("out.tsv.partial")
    header = results._journal_header(PROV).encode()
    for cut in range(len(header)):
        partial.write_bytes(header[:cut])
        assert read_journal(partial) == (None, [])
        assert not ResultJournal(out, OTHER_MODEL, resume=True).rows  # nothing to mix up: starts afresh
    partial.write_bytes(header)
    assert read_journal(partial) == (PROV, [])


def test_damaged_row_lines_are_skipped(tmp_path):
    journal = ResultJournal(tmp_path / "out.tsv", PROV, resume=False)
    journal.close()
    with open(journal.partial, "ab") as handle:
        handle.write(results._journal_line(ROWS[0]).encode())
        handle.write(b'{"path": "x.png", "score": "high", "probability": 0.5, "label": "OK"}\n')
        handle.write(b'{"path": "y.png", "probability": 0.5, "label": "OK"}\n')
        handle.write(b'{"path": "", "score": 1, "probability": 0.5, "label": "OK"}\n')
        handle.write(b"garbage\n[1, 2]\n\n")
        handle.write(results._journal_line(ROWS[1]).encode())
    assert read_journal(journal.partial) == (PROV, ROWS[:2])


@pytest.mark.parametrize("text", [
    "a.png\t101.5\t0.999999\tNG\n",  # an older padim's journal: TSV lines
    '{"path": "a.png", "score": 1.0, "probability": 0.5, "label": "OK"}\n',  # rows without a header
    '{"padim_journal": 99, "model": "x", "threshold": 1.0, "format": "default"}\n',
    '{"padim_journal": 1, "model": "x", "threshold": 1.0, "format": "csv"}\n',
    '{"padim_journal": 1, "model": 5, "threshold": 1.0, "format": "default"}\n',
])
def test_journal_without_a_valid_header_is_refused_and_left_alone(tmp_path, text):
    out = tmp_path / "out.tsv"
    partial = out.with_name("out.tsv.partial")
    partial.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"out\.tsv\.partial.*not a padim journal.*without --resume"):
        ResultJournal(out, PROV, resume=True)
    assert snapshot(tmp_path) == {"out.tsv.partial": text.encode()}
    ResultJournal(out, PROV, resume=False).close()  # without --resume it is simply replaced
    assert read_journal(partial) == (PROV, [])


# ----------------------------------------------------------------------------- ResultJournal

def test_journal_writes_out_only_at_finish_and_removes_the_partial(tmp_path):
    out = tmp_path / "deep" / "er" / "scores.tsv"  # parent folders are created
    journal = ResultJournal(out, PROV, resume=False)
    assert journal.partial == out.with_name("scores.tsv.partial")
    assert journal.partial.is_file() and not out.exists()
    journal.add(ROWS[:2])
    assert not out.exists()
    assert len(read_journal(journal.partial)[1]) == 2  # flushed as they come
    journal.add(ROWS[2:])
    assert journal.finish() == out
    assert out.read_text(encoding="utf-8") == format_rows(ROWS, "default")
    assert not journal.partial.exists()
    assert leftovers(out.parent) == []


def test_journal_signate_output(tmp_path):
    out = finished(tmp_path / "submit.tsv", ROWS, PROV_SIGNATE)
    assert out.read_text(encoding="utf-8") == format_rows(ROWS, "signate")


def test_existing_output_is_replaced_atomically(tmp_path, monkeypatch):
    out = tmp_path / "scores.tsv"
    write_output(out, [Row("old.png", 1.0, 0.5, "OK")], PROV)
    old = snapshot(tmp_path)
    journal = ResultJournal(out, PROV, resume=False)
    journal.add(ROWS)
    assert {k: v for k, v in snapshot(tmp_path).items() if k in old} == old  # untouched while the run goes on

    def broken(rows, fmt):
        raise OSError("disk full")

    monkeypatch.setattr(results, "format_rows", broken)
    with pytest.raises(OSError, match="disk full"):
        journal.finish()
    assert {k: v for k, v in snapshot(tmp_path).items() if k in old} == old  # a failed write leaves the old files
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    # the journal is still there, so a resumed run completes the file
    journal = ResultJournal(out, PROV, resume=True)
    assert all(journal.done(r.path) for r in ROWS) and journal.done("old.png")


def test_close_keeps_the_journal_and_resume_merges_out_and_journal(tmp_path):
    out = tmp_path / "scores.tsv"
    finished(out, ROWS[:2])  # OUT holds the first two rows (rounded as in the TSV)
    second = ResultJournal(out, PROV, resume=True)
    second.add([ROWS[2]])
    second.close()  # interrupted: the journal has rows 0-2, OUT still rows 0-1
    assert second.partial.is_file()
    assert [r.path for r in read_rows(out)] == sorted(r.path for r in ROWS[:2])
    third = ResultJournal(out, PROV, resume=True)
    assert [third.done(r.path) for r in ROWS] == [True, True, True, False]
    third.add([ROWS[3]])
    third.finish()
    back = read_rows(out)
    assert [r.path for r in back] == sorted(r.path for r in ROWS)  # each exactly once


def test_resume_drops_rows_of_images_no_longer_in_the_input(tmp_path):
    out = tmp_path / "scores.tsv"
    finished(out, ROWS[:2])
    journal = ResultJournal(out, PROV, resume=True)
    journal.add(ROWS[2:])
    journal.close()
    names = [ROWS[1].path, ROWS[3].path, "new.png"]  # ROWS[0] left OUT's input, ROWS[2] the journal's
    resumed = ResultJournal(out, PROV, resume=True, names=names)
    assert sorted(resumed.rows) == sorted([ROWS[1].path, ROWS[3].path])
    assert [r.path for r in read_journal(resumed.partial)[1]] == [ROWS[1].path, ROWS[3].path]
    resumed.finish()
    assert [r[0] for r in csv_records(out)[1:]] == sorted([ROWS[1].path, ROWS[3].path])


def test_without_resume_old_results_are_not_reused(tmp_path):
    out = tmp_path / "scores.tsv"
    old = ResultJournal(out, PROV, resume=False)
    old.add(ROWS)
    old.close()  # a stale journal
    new = ResultJournal(out, PROV, resume=False)
    assert not any(new.done(r.path) for r in ROWS)
    assert read_journal(new.partial) == (PROV, [])
    new.add([ROWS[0]])
    new.finish()
    assert [r.path for r in read_rows(out)] == [ROWS[0].path]


def test_without_resume_another_models_output_is_replaced(tmp_path):
    out = finished(tmp_path / "scores.tsv", ROWS)
    finished(out, ROWS[:1], OTHER_MODEL)
    assert json.loads(meta_path(out).read_text())["model"] == "b" * 32
    assert [r.path for r in read_rows(out)] == [ROWS[0].path]
    assert ResultJournal(out, OTHER_MODEL, resume=True).done(ROWS[0].path)


def test_resume_without_previous_output_starts_empty(tmp_path):
    journal = ResultJournal(tmp_path / "scores.tsv", PROV, resume=True)
    assert not journal.done("a.png")
    journal.finish()
    assert lines_of(tmp_path / "scores.tsv") == ["\t".join(HEADER)]


def test_resume_overrides_a_row_seen_twice_with_the_latest(tmp_path):
    out = finished(tmp_path / "scores.tsv", [ROWS[0], Row(ROWS[0].path, 1.0, 0.1, "OK")])
    back = read_rows(out)
    assert len(back) == 1 and back[0].score == 1.0


def test_resume_of_a_finished_signate_file_keeps_it_byte_for_byte(tmp_path):
    out = finished(tmp_path / "submit.tsv", ROWS, PROV_SIGNATE)
    before = snapshot(tmp_path)
    journal = ResultJournal(out, PROV_SIGNATE, resume=True)
    assert all(journal.done(r.path) for r in ROWS)
    journal.finish()
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- refusals: never mix runs

REFUSALS = {
    # what differs: (provenance of the run that resumes, expected message)
    "model": (OTHER_MODEL, r"another model \(fingerprint a{12}, this model b{12}\); score again without "
                           r"--resume to replace it, or write to another -o"),
    "threshold": (Provenance("a" * 32, 40.0, "default"),
                  r"threshold 42\.5 \(this run: 40\.0\); resume with --threshold 42\.5, or score again"),
    "format": (PROV_SIGNATE, r"format default \(this run: signate\); resume with --format default, or score"),
    "threshold and format": (Provenance("a" * 32, 40.0, "signate"),
                             r"threshold 42\.5 .* and format default .*resume with --threshold 42\.5 "
                             r"--format default, or"),
    "all": (Provenance("c" * 32, 1.0, "signate"), r"another model .* and threshold .* and format .*; score again"),
}


@pytest.mark.parametrize("what", sorted(REFUSALS))
@pytest.mark.parametrize("where", ["output", "journal", "both"])
def test_resume_with_another_model_threshold_or_format_is_refused_touching_nothing(tmp_path, what, where):
    out = tmp_path / "scores.tsv"
    if where in ("output", "both"):
        finished(out, ROWS[:2])
    if where in ("journal", "both"):
        journal = ResultJournal(out, PROV, resume=where == "both")
        journal.add(ROWS[2:])
        journal.close()
    before = snapshot(tmp_path)
    provenance, message = REFUSALS[what]
    with pytest.raises(ValueError, match=message) as caught:
        ResultJournal(out, provenance, resume=True)
    assert len(str(caught.value).splitlines()) == 1
    assert str(caught.value).startswith(f"'{out}" if where != "journal" else f"'{out}.partial'")
    assert snapshot(tmp_path) == before
    assert leftovers(tmp_path) == []


def test_signate_output_resumed_in_default_format_is_refused(tmp_path):
    """Signate rows have no score or label: a default TSV made from them would be malformed."""
    out = finished(tmp_path / "submit.tsv", ROWS[:2], PROV_SIGNATE)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="signate.*--format signate"):
        ResultJournal(out, PROV, resume=True)
    assert snapshot(tmp_path) == before
    assert all(ResultJournal(out, PROV_SIGNATE, resume=True).done(r.path) for r in ROWS[:2])


def test_output_of_an_older_padim_without_a_record_is_refused(tmp_path):
    out = tmp_path / "scores.tsv"
    out.write_text(format_rows(ROWS, "default"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"scores\.tsv' has no record of the model.*meta\.json' is missing.*"
                                         r"without --resume"):
        ResultJournal(out, PROV, resume=True)
    assert snapshot(tmp_path) == {"scores.tsv": format_rows(ROWS, "default").encode()}


def test_output_that_does_not_match_its_record_is_refused(tmp_path):
    out = finished(tmp_path / "scores.tsv", ROWS)
    # the record of one run beside the TSV of another (edited, or a kill between the renames)
    out.write_text(format_rows(ROWS[:3], "default"), encoding="utf-8")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"does not match its record 'scores\.tsv\.meta\.json'"):
        ResultJournal(out, PROV, resume=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("record", ["not json", "[]", '{"padim_result": 1}', '{"padim_result": 2, "model": "a"}',
                                    '{"padim_result": 1, "model": "a", "threshold": "high", "format": "default",'
                                    ' "sha256": "0"}'])
def test_unreadable_record_is_refused(tmp_path, record):
    out = finished(tmp_path / "scores.tsv", ROWS)
    meta_path(out).write_text(record)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"scores\.tsv\.meta\.json': not a padim result record"):
        ResultJournal(out, PROV, resume=True)
    assert snapshot(tmp_path) == before


def test_formats_constant():
    assert FORMATS == ("default", "signate")
