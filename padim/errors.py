"""One-line error messages from other libraries' exceptions.

padim reports bad input in one line that says what and where; a library's exception may carry
an empty message, or a message whose first line is blank, and neither should turn into a crash
(``"".splitlines()[0]``) or an empty reason.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message, stripped; its type's name if there is none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
