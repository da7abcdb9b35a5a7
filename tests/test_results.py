"""Probability TSVs: formats, reading back, the resumable journal and atomic replacement."""

import math

import pytest

from padim import results
from padim.results import FORMATS, HEADER, ResultJournal, Row, format_rows, read_rows

ROWS = [
    Row("sub/b.png", 12.345678912, 0.25, "OK"),
    Row("a.png", 101.5, 0.999999, "NG"),
    Row("sub/deeper/c.png", 3.0, 0.000123456, "OK"),
    Row("a_b.png", 50.25, 0.5, "NG"),
]


def lines_of(path):
    return path.read_text(encoding="utf-8").splitlines()


def leftovers(folder):
    """Temporary files of atomic writes left behind in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


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
        ResultJournal(tmp_path / "out.tsv", fmt, resume=False)
    assert list(tmp_path.iterdir()) == []  # nothing written for a bad format


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


def test_journal_lines_keep_full_precision(tmp_path):
    journal = ResultJournal(tmp_path / "out.tsv", "default", resume=False)
    journal.add(ROWS)
    journal.close()
    assert read_rows(journal.partial) == ROWS  # repr floats: exact, in the order added


def test_finished_file_with_a_bad_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "scores.tsv"
    text = format_rows(ROWS, "default")
    path.write_text(text + "x.png\tnot-a-number\t0.5\tOK\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"line {len(ROWS) + 2}: not a padim result row"):
        read_rows(path)
    path.write_text("just some text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        read_rows(path)


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text(format_rows(ROWS, "default") + "\n\n", encoding="utf-8")
    assert len(read_rows(path)) == len(ROWS)


def _journal_with_cut_last_line(tmp_path, cut):
    journal = ResultJournal(tmp_path / "out.tsv", "default", resume=False)
    journal.add(ROWS[:2])
    journal.close()
    last = results._row_line(ROWS[2])
    with open(journal.partial, "a", encoding="utf-8") as handle:
        handle.write(last[:cut])
    return journal.partial


@pytest.mark.parametrize("cut", range(1, len(results._row_line(ROWS[2]))))
def test_journal_with_a_truncated_last_line_is_tolerated(tmp_path, cut):
    """A kill can cut the journal's last line anywhere: the complete rows are kept, the cut row
    is dropped (so that image is scored again), never misread as another row."""
    partial = _journal_with_cut_last_line(tmp_path, cut)
    assert read_rows(partial) == ROWS[:2]


@pytest.mark.parametrize("cut", [1, 5, 6, 9, 12, 17, 21, 22, 23])
def test_journal_cut_in_its_first_line_is_empty(tmp_path, cut):
    out = tmp_path / "out.tsv"
    partial = out.with_name("out.tsv.partial")
    partial.write_text(results._row_line(ROWS[1])[:cut], encoding="utf-8")  # "a.png\t101.5\t0.999999\tNG\n"
    assert read_rows(partial) == []
    assert not ResultJournal(out, "default", resume=True).done(ROWS[1].path)


def test_resume_from_a_journal_with_a_truncated_last_line(tmp_path):
    partial = _journal_with_cut_last_line(tmp_path, 12)
    journal = ResultJournal(tmp_path / "out.tsv", "default", resume=True)
    assert journal.done(ROWS[0].path) and journal.done(ROWS[1].path)
    assert not journal.done(ROWS[2].path)
    # the journal was rewritten without the cut line, so appending keeps it well-formed
    journal.add([ROWS[2], ROWS[3]])
    journal.close()
    assert read_rows(partial) == ROWS
    assert partial.read_text(encoding="utf-8").count("\n") == len(ROWS)


# ----------------------------------------------------------------------------- ResultJournal

def test_journal_writes_out_only_at_finish_and_removes_the_partial(tmp_path):
    out = tmp_path / "deep" / "er" / "scores.tsv"  # parent folders are created
    journal = ResultJournal(out, "default", resume=False)
    assert journal.partial == out.with_name("scores.tsv.partial")
    assert journal.partial.is_file() and not out.exists()
    journal.add(ROWS[:2])
    assert not out.exists()
    assert len(read_rows(journal.partial)) == 2  # flushed as they come
    journal.add(ROWS[2:])
    assert journal.finish() == out
    assert out.read_text(encoding="utf-8") == format_rows(ROWS, "default")
    assert not journal.partial.exists()
    assert leftovers(out.parent) == []


def test_journal_signate_output(tmp_path):
    out = tmp_path / "submit.tsv"
    journal = ResultJournal(out, "signate", resume=False)
    journal.add(ROWS)
    journal.finish()
    assert out.read_text(encoding="utf-8") == format_rows(ROWS, "signate")


def test_existing_output_is_replaced_atomically(tmp_path, monkeypatch):
    out = tmp_path / "scores.tsv"
    old = format_rows([Row("old.png", 1.0, 0.5, "OK")], "default")
    out.write_text(old, encoding="utf-8")
    journal = ResultJournal(out, "default", resume=False)
    journal.add(ROWS)
    assert out.read_text(encoding="utf-8") == old  # untouched while the run goes on

    def broken(rows, fmt):
        raise OSError("disk full")

    monkeypatch.setattr(results, "format_rows", broken)
    with pytest.raises(OSError, match="disk full"):
        journal.finish()
    assert out.read_text(encoding="utf-8") == old  # a failed write leaves the old file
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    # the journal is still there, so a resumed run completes the file
    journal = ResultJournal(out, "default", resume=True)
    assert all(journal.done(r.path) for r in ROWS)


def test_close_keeps_the_journal_and_resume_merges_out_and_journal(tmp_path):
    out = tmp_path / "scores.tsv"
    first = ResultJournal(out, "default", resume=False)
    first.add(ROWS[:2])
    first.finish()  # OUT holds the first two rows (rounded as in the TSV)
    second = ResultJournal(out, "default", resume=True)
    second.add([ROWS[2]])
    second.close()  # interrupted: the journal has rows 0-2, OUT still rows 0-1
    assert second.partial.is_file()
    assert [r.path for r in read_rows(out)] == sorted(r.path for r in ROWS[:2])
    third = ResultJournal(out, "default", resume=True)
    assert [third.done(r.path) for r in ROWS] == [True, True, True, False]
    third.add([ROWS[3]])
    third.finish()
    back = read_rows(out)
    assert [r.path for r in back] == sorted(r.path for r in ROWS)  # each exactly once


def test_without_resume_old_results_are_not_reused(tmp_path):
    out = tmp_path / "scores.tsv"
    old = ResultJournal(out, "default", resume=False)
    old.add(ROWS)
    old.close()  # a stale journal
    new = ResultJournal(out, "default", resume=False)
    assert not any(new.done(r.path) for r in ROWS)
    assert read_rows(new.partial) == []
    new.add([ROWS[0]])
    new.finish()
    assert [r.path for r in read_rows(out)] == [ROWS[0].path]


def test_resume_without_previous_output_starts_empty(tmp_path):
    journal = ResultJournal(tmp_path / "scores.tsv", "default", resume=True)
    assert not journal.done("a.png")
    journal.finish()
    assert lines_of(tmp_path / "scores.tsv") == ["\t".join(HEADER)]


def test_resume_overrides_a_row_seen_twice_with_the_latest(tmp_path):
    out = tmp_path / "scores.tsv"
    journal = ResultJournal(out, "default", resume=False)
    journal.add([ROWS[0], Row(ROWS[0].path, 1.0, 0.1, "OK")])
    journal.finish()
    back = read_rows(out)
    assert len(back) == 1 and back[0].score == 1.0


def test_resuming_a_signate_file_in_default_format_is_refused(tmp_path):
    """Signate rows have no score or label: a default TSV made from them would be malformed."""
    out = tmp_path / "submit.tsv"
    journal = ResultJournal(out, "signate", resume=False)
    journal.add(ROWS[:2])
    journal.finish()
    before = out.read_bytes()
    with pytest.raises(ValueError, match="signate.*--format signate"):
        ResultJournal(out, "default", resume=True)
    assert out.read_bytes() == before
    assert not out.with_name("submit.tsv.partial").exists()
    assert all(ResultJournal(out, "signate", resume=True).done(r.path) for r in ROWS[:2])


def test_formats_constant():
    assert FORMATS == ("default", "signate")
