"""A tiny T5 (4 heads, 2+2 layers, the test tokenizer's 4100 ids), random token windows and a trainer on them."""

import numpy as np

from mlx_mqa.models.config import ModelArgs
from mlx_mqa.train.config import TrainConfig
from mlx_mqa.train.data import SpanCorruptionData, make_windows
from mlx_mqa.train.init import init_model
from mlx_mqa.train.trainer import Trainer

TINY = dict(
    vocab_size=4100,
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
)


def tiny_model(kv_heads=4, seed=0):
    return init_model(ModelArgs.from_dict({**TINY, "num_key_value_heads": kv_heads}), seed=seed)


def windows(n=24, raw=30, seed=0):
    return make_windows(np.random.default_rng(seed).integers(3, 3900, n * raw).astype(np.int32), raw)


def span_trainer(
    tokenizer, run_dir, model=None, kv_heads=2, batch_size=4, steps=4, keep_tokenizer=False, teacher=None, **config
):
    """A Trainer of `model` (default: a tiny one with `kv_heads` K/V heads) on span corruption of `windows()`,
    data seed 7; `config` goes to TrainConfig, `keep_tokenizer` saves the tokenizer into checkpoints, `teacher`
    distils (with `kd_weight` in `config`)."""
    data = SpanCorruptionData(windows(), tokenizer, batch_size, seed=7)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, **config)
    tok = tokenizer if keep_tokenizer else None
    return Trainer(model or tiny_model(kv_heads), data, cfg, run_dir, tokenizer=tok, teacher=teacher)


def stream_trainer(tokenizer, run_dir, corpus, batch_size=2, steps=4, **config):
    """A Trainer of a tiny GQA-2 model on span corruption streamed from `corpus`, sharded by this process's rank."""
    import mlx.core as mx

    from mlx_mqa.train.stream import StreamedSpanData

    group = mx.distributed.init()
    data = StreamedSpanData(
        [str(corpus)], tokenizer, batch_size, 30, seed=7, rank=group.rank(), world=group.size(), block_windows=4
    )
    cfg = TrainConfig(steps=steps, batch_size=batch_size, **config)
    return Trainer(tiny_model(2), data, cfg, run_dir)
