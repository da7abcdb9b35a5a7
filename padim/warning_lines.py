"""Warnings on the command line: one line each (``padim: warning: …``, not Python's two-line
format with a source line), and no flood — a message repeated for image after image (a folder
of 16-bit files scored by an 8-bit model warns once per file) is printed MAX_SAME times, then
counted, and the count is printed when the command ends."""

from __future__ import annotations

import re
import sys
import threading
import warnings

MAX_SAME = 3  # lines printed per kind of warning; the rest are counted
_LEADING_PATH = re.compile(r"^'[^']*': ")  # "'a/b.png': …" — the same warning for another file


class WarningLines:
    """``with WarningLines():`` shows the warnings raised inside as single lines on stderr (in
    this process, and in decoding workers forked inside, which print their own first lines)."""

    def __init__(self, stream=None, max_same: int = MAX_SAME):
        self.stream, self.max_same = stream, max_same
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()  # the runtime decodes in threads, each may warn

    def show(self, message, category=UserWarning, filename="", lineno=0, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        kind = _LEADING_PATH.sub("", text)
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if self.counts[kind] <= self.max_same:
                self._write(f"padim: warning: {text}")

    def summary(self) -> None:
        """A line for each kind of warning that was cut short: how many more there were."""
        for kind, count in self.counts.items():
            if count > self.max_same:
                self._write(f"padim: warning: {count - self.max_same} more like the above ({count} in all): {kind}")

    def _write(self, line: str) -> None:
        """One whole line, above any progress bar (tqdm.write clears and redraws it; an install
        for exports only may have no tqdm, and then no bars either)."""
        stream = self.stream or sys.stderr
        try:
            from tqdm.auto import tqdm
        except ModuleNotFoundError:
            stream.write(line + "\n")
            return
        tqdm.write(line, file=stream)

    def __enter__(self) -> "WarningLines":
        self._saved = warnings.showwarning
        warnings.showwarning = self.show
        return self

    def __exit__(self, *exc) -> None:
        warnings.showwarning = self._saved
        self.summary()
