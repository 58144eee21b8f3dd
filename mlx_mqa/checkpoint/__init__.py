"""Checkpoint IO: reading Hugging Face checkpoints, writing and loading MLX model directories."""

from .load import load, load_model, load_tokenizer

__all__ = ["load", "load_model", "load_tokenizer"]
