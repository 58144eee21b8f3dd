"""Models initialised from scratch, for pretraining small T5s (the experiments) and for tests."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..checkpoint.random_init import random_t5_weights
from ..models.config import ModelArgs
from ..models.t5 import Model


def init_model(args: ModelArgs, seed: int = 0) -> Model:
    """A freshly initialised model (T5/transformers init; lm_head std d_model**-0.5 when untied)."""
    w = random_t5_weights(args.to_dict(), seed=seed)
    if not args.tie_word_embeddings:
        rng = np.random.default_rng([seed, 7])
        w["lm_head.weight"] = rng.standard_normal((args.vocab_size, args.d_model), dtype=np.float32) * np.float32(
            args.d_model**-0.5
        )
    model = Model(args)
    rng = np.random.default_rng([seed, 8])
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    for k, shape in shapes.items():
        if k in w and tuple(w[k].shape) != shape:  # grouped K/V projections: fewer heads
            w[k] = rng.standard_normal(shape, dtype=np.float32) * np.float32(args.d_model**-0.5)
    model.load_weights([(k, mx.array(v)) for k, v in model.sanitize(w).items()])
    mx.eval(model.parameters())
    return model
