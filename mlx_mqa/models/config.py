"""Model configuration: a typed view of a Hugging Face T5 ``config.json``."""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import ConfigError


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
    # The input length the model was trained for (older configs): prompts longer are refused or truncated by
    # default (`max_input_tokens`), since the encoder's cost grows with its square.
    n_positions: Optional[int] = None
    model_type: str = "t5"
    # Key/value heads of the decoder (self- and cross-attention) and of the encoder.
    # None means multi-head (= num_heads).
    num_key_value_heads: Optional[int] = None
    encoder_num_key_value_heads: Optional[int] = None
    # Per decoder layer, the original index of each self-attention head when conversion regrouped heads
    # (similarity grouping); the layer reads the shared relative position bias in this order.
    decoder_head_order: Optional[List[List[int]]] = None
    # How this model was made from a multi-head checkpoint (source, pool, groups_in, ...).
    conversion: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_types(self)
        if self.model_type not in ("t5", "mt5", "mlx_mqa_t5"):
            raise ConfigError(f"config.json has model_type={self.model_type!r}; only T5 checkpoints are supported")
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_heads
        if self.encoder_num_key_value_heads is None:
            self.encoder_num_key_value_heads = self.num_heads
        check_sizes(self)
        for name in ("num_key_value_heads", "encoder_num_key_value_heads"):
            check_kv_heads(getattr(self, name), self.num_heads, name)
        if self.decoder_head_order is not None:
            orders = self.decoder_head_order
            if len(orders) != self.num_decoder_layers or any(sorted(o) != list(range(self.num_heads)) for o in orders):
                raise ConfigError("decoder_head_order must hold one permutation of the heads per decoder layer")
        act = self.feed_forward_proj.split("-")
        if len(act) > 2 or (len(act) == 2 and act[0] != "gated"):
            raise ConfigError(f"feed_forward_proj={self.feed_forward_proj!r} is not 'ACT' or 'gated-ACT'")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def num_parameters(self) -> int:
        """Weights of the model these settings build (attention, FFN, embeddings; norms and biases aside)."""
        d, kv = self.d_model, self.d_kv
        ffn = d * self.d_ff * (3 if self.is_gated else 2)
        enc_attn = d * kv * (2 * self.num_heads + 2 * self.encoder_num_key_value_heads)
        dec_attn = d * kv * (2 * self.num_heads + 2 * self.num_key_value_heads)
        blocks = self.num_layers * (enc_attn + ffn) + self.num_decoder_layers * (2 * dec_attn + ffn)
        return blocks + self.vocab_size * d * (1 if self.tie_word_embeddings else 2)

    @property
    def activation(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        # transformers maps "gated-gelu" to the tanh approximation (gelu_new).
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @property
    def max_input_tokens(self) -> int:
        """The default limit on a prompt's tokens (generate's `max_input_tokens`)."""
        return self.n_positions or DEFAULT_INPUT_TOKENS

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @classmethod
    def from_dict(cls, params: Dict[str, Any]) -> "ModelArgs":
        if not isinstance(params, dict):
            raise ConfigError(f"config.json must hold a JSON object of settings, not a {type(params).__name__}")
        known = inspect.signature(cls).parameters
        if "d_model" not in params or "num_heads" not in params:
            raise ConfigError("config.json is not a T5 config (no d_model / num_heads)")
        args = {k: v for k, v in params.items() if k in known}
        args["tie_word_embeddings"] = tied_word_embeddings(params)
        return cls(**args)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# Bounds on the sizes that allocate, far above any T5 (24 layers, 250k tokens, width 4096, 128 heads),
# so that a hostile or mistyped config.json is refused before anything is built.
MAX_LAYERS = 1024
MAX_VOCAB = 1 << 22
MAX_WIDTH = 1 << 17
SIZE_FIELDS = {  # field: upper bound
    "vocab_size": MAX_VOCAB,
    "d_model": MAX_WIDTH,
    "d_kv": MAX_WIDTH,
    "d_ff": MAX_WIDTH,
    "num_heads": MAX_WIDTH,
    "num_layers": MAX_LAYERS,
    "num_decoder_layers": MAX_LAYERS,
    "num_key_value_heads": MAX_WIDTH,
    "encoder_num_key_value_heads": MAX_WIDTH,
    "relative_attention_num_buckets": MAX_WIDTH,
    "relative_attention_max_distance": 1 << 30,
}
# T5's pretraining input length: the default limit on prompts where config.json has no n_positions.
DEFAULT_INPUT_TOKENS = 512
TOKEN_FIELDS = ("decoder_start_token_id", "pad_token_id", "eos_token_id")


def check_types(args: "ModelArgs") -> None:
    """Every setting of config.json has the type its field says (a null, list or string where a number
    belongs is refused here, with the setting's name, not deep inside the model)."""
    for f in dataclasses.fields(args):
        value, kind = getattr(args, f.name), str(f.type)
        if value is None and kind.startswith("Optional"):
            continue
        if "int" in kind and "List" not in kind:
            ok, what = type(value) is int, "an integer"
        elif kind == "float":
            ok, what = type(value) in (int, float) and value == value, "a number"
        elif kind == "bool":
            ok, what = type(value) is bool, "true or false"
        elif kind == "str":
            ok, what = isinstance(value, str), "a string"
        elif kind.startswith("Dict"):
            ok, what = isinstance(value, dict), "an object"
        else:  # decoder_head_order
            ok = isinstance(value, list) and all(isinstance(o, list) and all(type(i) is int for i in o) for o in value)
            what = "a list of lists of integers"
        if not ok:
            raise ConfigError(f"config.json: {f.name} must be {what}, not {value!r}")


def check_sizes(args: "ModelArgs") -> None:
    """Sizes in range before anything allocates: positive, bounded, and a model that fits this machine's
    memory even at 4 bits per weight (the smallest this package stores)."""
    for name, high in SIZE_FIELDS.items():
        value = getattr(args, name)
        if not 1 <= value <= high:
            raise ConfigError(f"config.json: {name} must be between 1 and {high}, not {value}")
    if args.n_positions is not None and not 1 <= args.n_positions <= 1 << 30:
        raise ConfigError(f"config.json: n_positions must be between 1 and {1 << 30}, not {args.n_positions}")
    for name in TOKEN_FIELDS:
        if not 0 <= getattr(args, name) < args.vocab_size:
            raise ConfigError(
                f"config.json: {name}={getattr(args, name)} is not a token id of the {args.vocab_size}-token vocabulary"
            )
    if not args.layer_norm_epsilon > 0:
        raise ConfigError(f"config.json: layer_norm_epsilon must be > 0, not {args.layer_norm_epsilon}")
    need, have = args.num_parameters / 2, machine_memory()
    if have and need > have:
        raise ConfigError(
            f"config.json describes a model of {args.num_parameters:,} weights: at least {need / 2**30:.1f} GiB "
            f"even at 4 bits per weight, more than this machine's {have / 2**30:.1f} GiB of memory"
        )


def machine_memory() -> Optional[int]:
    """Physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def valid_kv_heads(num_heads: int) -> List[int]:
    return [g for g in range(1, num_heads + 1) if num_heads % g == 0]


def check_kv_heads(kv_heads: int, num_heads: int, what: str = "--kv-heads") -> None:
    """The one rule for K/V head counts: G must divide H (groups of H/G query heads)."""
    if kv_heads < 1 or num_heads % kv_heads:
        valid = ", ".join(map(str, valid_kv_heads(num_heads)))
        raise ConfigError(f"{what} {kv_heads} does not divide the {num_heads} attention heads; valid values: {valid}")


def tied_word_embeddings(config: dict) -> bool:
    """Absent or null `tie_word_embeddings` in config.json means tied (T5 v1.0: decoder output scaled by
    d_model**-0.5); only an explicit false unties (v1.1, LM-adapt, Flan). Read from the JSON, never from a
    loaded transformers T5Config (always True there in transformers 5.x)."""
    return config.get("tie_word_embeddings") is not False
