"""A tiny T5 (4 heads, 2+2 layers, the test tokenizer's 4100 ids) and random token windows."""

import numpy as np

from mlx_mqa.models.config import ModelArgs
from mlx_mqa.train.data import make_windows
from mlx_mqa.train.init import init_model

TINY = dict(vocab_size=4100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=8,
            relative_attention_max_distance=32)


def tiny_model(kv_heads=4, seed=0):
    return init_model(ModelArgs.from_dict({**TINY, "num_key_value_heads": kv_heads}), seed=seed)


def windows(n=24, raw=30, seed=0):
    return make_windows(np.random.default_rng(seed).integers(3, 3900, n * raw).astype(np.int32), raw)
