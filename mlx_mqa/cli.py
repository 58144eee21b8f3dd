"""What the command-line tools share: reporting a user error, and the calibration options."""

from __future__ import annotations

import re
from typing import Tuple

import click

from .errors import ConfigError, MlxMqaError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def fail(e: BaseException, default_code: int = 2):
    """Print `error: ...` (one line, no traceback) and exit with the error's code."""
    click.echo(f"error: {e}", err=True)
    raise SystemExit(getattr(e, "exit_code", default_code) if isinstance(e, MlxMqaError) else default_code)


def calibration_options(f):
    """--calibration, --calibration-samples, --calibration-lengths (convert and bench)."""
    f = click.option(
        "--calibration-lengths",
        default="512x128",
        show_default=True,
        help="INPUTxTARGET tokens per calibration sample (encoder input x teacher-forced decoder input).",
    )(f)
    f = click.option(
        "--calibration-samples", type=int, default=128, show_default=True, help="Most calibration samples."
    )(f)
    return click.option(
        "--calibration",
        default="bundled",
        show_default=True,
        help="Calibration data of fit/svd/svd-q and --grouping similar: FILE.jsonl (document+summary, or text), "
        "a directory of *.jsonl/*.txt, hf:NAME[:CONFIG][@SPLIT], or bundled (24 real documents, offline).",
    )(f)


def lengths_pair(text: str) -> Tuple[int, int]:
    """'512x128' -> (512, 128)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--calibration-lengths takes one INPUTxTARGET pair such as 512x128, got {text!r}") from None
    if a < 2 or b < 2:
        raise ConfigError(f"--calibration-lengths: both lengths must be at least 2, got {text!r}")
    return a, b


SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, option: str = "--memory-budget") -> int:
    """'6GB', '6GiB', '1500MB', '2.5G', '1000000' -> bytes (binary units: 1 GB = 2**30 bytes, as memory is sold)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{option} {text!r} is not a size such as 6GB, 512MiB or 1500MB")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2)])
