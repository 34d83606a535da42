"""User-facing errors: one line that names the problem (and the file), no traceback."""


class RobustgenError(Exception):
    """Bad input or configuration. The CLI prints ``robustgen: error: <message>`` and exits 2."""


class NonFiniteError(RobustgenError):
    """Training's loss or weights became NaN/inf; nothing after the last good checkpoint was saved."""
