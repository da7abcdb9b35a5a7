"""The command line's warnings: one line each, repeats of one kind counted after MAX_SAME."""

import io
import warnings

from padim.warning_lines import MAX_SAME, WarningLines


def test_each_warning_is_one_line_and_repeats_for_other_files_are_counted():
    stream = io.StringIO()
    with WarningLines(stream=stream):
        for i in range(MAX_SAME + 4):
            warnings.warn(f"'dir/{i}.png': deeper-than-8-bit pixels,\n  mapped by their own scale", stacklevel=1)
        warnings.warn("training images mix bit depths")  # another kind: shown
        warnings.warn("'it''s.png': a path with a quote")  # not a clean path prefix: its own kind
    lines = stream.getvalue().splitlines()
    assert lines[:MAX_SAME] == [f"padim: warning: 'dir/{i}.png': deeper-than-8-bit pixels, mapped by their own scale"
                                for i in range(MAX_SAME)]
    assert lines[MAX_SAME:MAX_SAME + 2] == ["padim: warning: training images mix bit depths",
                                            "padim: warning: 'it''s.png': a path with a quote"]
    assert lines[MAX_SAME + 2:] == [f"padim: warning: 4 more like the above ({MAX_SAME + 4} in all): "
                                    f"deeper-than-8-bit pixels, mapped by their own scale"]


def test_the_previous_display_is_restored():
    before = warnings.showwarning
    with WarningLines(stream=io.StringIO()):
        assert warnings.showwarning is not before
    assert warnings.showwarning is before


def test_without_tqdm_the_lines_are_written_plainly(monkeypatch):
    """An install for exports only may lack tqdm: the lines are the same."""
    import sys

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # importing it now fails
    stream = io.StringIO()
    with WarningLines(stream=stream):
        warnings.warn("'a.png': odd", stacklevel=1)
    assert stream.getvalue() == "padim: warning: 'a.png': odd\n"
