"""The `edgeprobe` command line: parse.py (arguments to edgeprobe.api calls), render.py (records to tables), main.py (dispatch, exit codes)."""

from __future__ import annotations

from edgeprobe.cli import render
from edgeprobe.cli.main import EXIT_INTERNAL, EXIT_USAGE, main, run
from edgeprobe.cli.parse import DEFAULT_MIN_SECONDS, build_parser
from edgeprobe.cli.render import console, err_console, render_result, render_split, render_sweep

__all__ = ["DEFAULT_MIN_SECONDS", "EXIT_INTERNAL", "EXIT_USAGE", "build_parser", "console", "err_console", "main",
           "render", "render_result", "render_split", "render_sweep", "run"]
