"""`python -m mlx_mqa.uptrain`: continue training a converted T5 (see mlx_mqa/train/uptrain.py)."""

from .train.uptrain import main

if __name__ == "__main__":
    main()
