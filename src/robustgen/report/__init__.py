"""Reports: markdown results table and PNG figures."""

from robustgen.report.markdown import write_report

__all__ = ["write_report"]
