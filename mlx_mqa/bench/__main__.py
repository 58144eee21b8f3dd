"""`python -m mlx_mqa.bench`: the benchmark CLI (the same as `python bench.py`)."""

from .cli import main

if __name__ == "__main__":
    main()
