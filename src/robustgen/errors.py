"""User-facing errors: one line that names the problem (and the file), no traceback."""


class RobustgenError(Exception):
    """Bad input or configuration. The CLI prints ``robustgen: error: <message>`` and exits 2."""
