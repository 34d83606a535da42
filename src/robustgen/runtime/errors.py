"""User-facing errors: one line that names the problem (and the file), no traceback."""

from __future__ import annotations


class RobustgenError(Exception):
    """Bad input or configuration. The CLI prints ``robustgen: error: <message>`` and exits 2."""


class NonFiniteError(RobustgenError):
    """Training's loss or weights became NaN/inf; nothing after the last good checkpoint was saved."""


def first_line(e: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name
    when the message is empty: the detail a one-line error quotes."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__
