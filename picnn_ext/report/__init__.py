"""Reports of training runs: ``write_report(run_dir)`` (figures and ``report.md``, needs matplotlib),
``compare_table(run_dirs)`` and ``seed_table(summaries)`` (markdown tables)."""

from .summary import compare_table, markdown_table, seed_table, write_report

__all__ = ["compare_table", "markdown_table", "seed_table", "write_report"]
