"""The ``privbench`` command line: ``run``, ``sweep``, ``table``, ``plot``, ``baseline``,
``check`` and ``list``."""

from privbench.cli.main import entry, format_rows, main
from privbench.cli.parser import UsageError, build_parser, config_from_args

__all__ = ["UsageError", "build_parser", "config_from_args", "entry", "format_rows", "main"]
