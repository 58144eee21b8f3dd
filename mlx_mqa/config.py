"""Model configuration: a typed view of a Hugging Face T5 ``config.json``."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .errors import ConfigError


@dataclass
class ModelArgs:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: Optional[int] = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    # Absent or true in config.json means v1.0: head tied to `shared`, decoder output scaled.
    tie_word_embeddings: bool = True
    decoder_start_token_id: int = 0
    pad_token_id: int = 0
    eos_token_id: int = 1
    model_type: str = "t5"
    # Key/value heads of the decoder (self- and cross-attention) and of the encoder.
    # None means multi-head (= num_heads).
    num_key_value_heads: Optional[int] = None
    encoder_num_key_value_heads: Optional[int] = None
    # How this model was made from a multi-head checkpoint (source, pool, groups_in, ...).
    conversion: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.model_type not in ("t5", "mt5", "mlx_mqa_t5"):
            raise ConfigError(f"config.json has model_type={self.model_type!r}; only T5 checkpoints are supported")
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_heads
        if self.encoder_num_key_value_heads is None:
            self.encoder_num_key_value_heads = self.num_heads
        for name in ("num_key_value_heads", "encoder_num_key_value_heads"):
            g = getattr(self, name)
            if g < 1 or self.num_heads % g:
                raise ConfigError(
                    f"{name}={g} does not divide num_heads={self.num_heads}; "
                    f"valid values: {valid_kv_heads(self.num_heads)}"
                )
        act = self.feed_forward_proj.split("-")
        if len(act) > 2 or (len(act) == 2 and act[0] != "gated"):
            raise ConfigError(f"feed_forward_proj={self.feed_forward_proj!r} is not 'ACT' or 'gated-ACT'")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        # transformers maps "gated-gelu" to the tanh approximation (gelu_new).
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> "ModelArgs":
        if "d_model" not in params or "num_heads" not in params:
            raise ConfigError("config.json is not a T5 config (no d_model / num_heads)")
        known = inspect.signature(cls).parameters
        args = {k: v for k, v in params.items() if k in known}
        # A checkpoint's config may say tie_word_embeddings: null; treat like absent.
        if args.get("tie_word_embeddings") is None:
            args.pop("tie_word_embeddings", None)
        return cls(**args)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def valid_kv_heads(num_heads: int):
    return [g for g in range(1, num_heads + 1) if num_heads % g == 0]
