"""What the command-line tools share: one way to report a user error and exit."""

from __future__ import annotations

import click

from .errors import MlxMqaError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def fail(e: BaseException, default_code: int = 2):
    """Print `error: ...` (one line, no traceback) and exit with the error's code."""
    click.echo(f"error: {e}", err=True)
    raise SystemExit(getattr(e, "exit_code", default_code) if isinstance(e, MlxMqaError) else default_code)
