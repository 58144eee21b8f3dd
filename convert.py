#!/usr/bin/env python
"""Shim for `python -m mlx_mqa.convert` (see `python convert.py --help`)."""

from mlx_mqa.convert import main

if __name__ == "__main__":
    main()
