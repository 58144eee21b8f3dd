#!/usr/bin/env python
"""Speed, memory and ROUGE of MHA vs GQA vs MQA T5 in MLX, beside PyTorch: `python bench.py --help`."""

from mlx_mqa.bench.cli import main

if __name__ == "__main__":
    main()
