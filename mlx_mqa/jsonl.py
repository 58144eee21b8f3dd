"""The one JSON Lines reader, for benchmark data, training corpora and calibration sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Tuple

from .errors import InputError


def read_jsonl(path: Path) -> Iterator[Tuple[int, object]]:
    """(1-based line number, record) for every non-empty line; bad JSON names its line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e})") from None
