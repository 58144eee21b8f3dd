"""Random-weight T5 checkpoints of real shapes, written in Hugging Face layout (no torch needed).

Speed does not depend on weight values and parity with transformers holds for any weights,
so these stand in for real checkpoints where no model hub is reachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np

from ..models.config import tied_word_embeddings


def random_t5_weights(config: dict, seed: int = 0, shared_std: float = 1.0) -> Dict[str, np.ndarray]:
    """Weights initialised like transformers' T5 `_init_weights` (factor 1.0).

    With tied embeddings a unit-std `shared` dominates the residual stream and greedy decoding
    just repeats its input; a smaller `shared_std` gives varied tokens for generation tests.
    """
    rng = np.random.default_rng(seed)
    d, dkv, H, dff, V = config["d_model"], config["d_kv"], config["num_heads"], config["d_ff"], config["vocab_size"]
    inner = H * dkv
    gated = config.get("feed_forward_proj", "relu").startswith("gated-")
    n_enc = config["num_layers"]
    n_dec = config.get("num_decoder_layers") or n_enc
    buckets = config.get("relative_attention_num_buckets", 32)

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    w = {"shared.weight": normal((V, d), shared_std)}

    def attention(prefix, bias):
        w[f"{prefix}.q.weight"] = normal((inner, d), (d * dkv) ** -0.5)
        w[f"{prefix}.k.weight"] = normal((inner, d), d**-0.5)
        w[f"{prefix}.v.weight"] = normal((inner, d), d**-0.5)
        w[f"{prefix}.o.weight"] = normal((d, inner), inner**-0.5)
        if bias:
            w[f"{prefix}.relative_attention_bias.weight"] = normal((buckets, H), d**-0.5)

    def ffn(prefix):
        if gated:
            w[f"{prefix}.DenseReluDense.wi_0.weight"] = normal((dff, d), d**-0.5)
            w[f"{prefix}.DenseReluDense.wi_1.weight"] = normal((dff, d), d**-0.5)
        else:
            w[f"{prefix}.DenseReluDense.wi.weight"] = normal((dff, d), d**-0.5)
        w[f"{prefix}.DenseReluDense.wo.weight"] = normal((d, dff), dff**-0.5)
        w[f"{prefix}.layer_norm.weight"] = np.ones(d, np.float32)

    for i in range(n_enc):
        p = f"encoder.block.{i}.layer"
        attention(f"{p}.0.SelfAttention", i == 0)
        w[f"{p}.0.layer_norm.weight"] = np.ones(d, np.float32)
        ffn(f"{p}.1")
    for i in range(n_dec):
        p = f"decoder.block.{i}.layer"
        attention(f"{p}.0.SelfAttention", i == 0)
        w[f"{p}.0.layer_norm.weight"] = np.ones(d, np.float32)
        attention(f"{p}.1.EncDecAttention", False)
        w[f"{p}.1.layer_norm.weight"] = np.ones(d, np.float32)
        ffn(f"{p}.2")
    w["encoder.final_layer_norm.weight"] = np.ones(d, np.float32)
    w["decoder.final_layer_norm.weight"] = np.ones(d, np.float32)
    if not tied_word_embeddings(config):
        w["lm_head.weight"] = normal((V, d), 1.0)
    return w


def save_random_checkpoint(
    config: dict,
    out_dir,
    seed: int = 0,
    tokenizer=None,
    dtype: str = "float32",
    shards: int = 1,
    shared_std: float = 1.0,
) -> Path:
    """Write config.json + model.safetensors (or `shards` shards with an index) in HF layout."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = random_t5_weights(config, seed, shared_std)
    if dtype == "float16":
        weights = {k: v.astype(np.float16) for k, v in weights.items()}
    names = sorted(weights)
    if shards == 1:
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: weights[k] for k in part}, str(out / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = dict(config)
    cfg.setdefault("model_type", "t5")
    cfg.setdefault("architectures", ["T5ForConditionalGeneration"])
    cfg["random_weights_seed"] = seed
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
