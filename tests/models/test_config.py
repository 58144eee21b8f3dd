import pytest

from mlx_mqa.checkpoint.hf import fix_feed_forward
from mlx_mqa.errors import CheckpointError, ConfigError
from mlx_mqa.models.config import ModelArgs
from tests.helpers import t5_config


def test_from_dict_ignores_unknown_keys_and_reads_v10():
    args = ModelArgs.from_dict({**t5_config("t5-small"), "some_future_key": 3})
    assert (args.d_model, args.num_heads, args.d_ff, args.num_decoder_layers) == (512, 8, 2048, 6)
    assert args.tie_word_embeddings and not args.is_gated and args.activation == "relu"
    assert args.num_key_value_heads == 8 and args.encoder_num_key_value_heads == 8


def test_v11_and_flan_shapes():
    v11 = ModelArgs.from_dict(t5_config("t5-v1_1-large"))
    assert v11.is_gated and v11.activation == "gelu_new" and not v11.tie_word_embeddings
    flan = ModelArgs.from_dict(t5_config("flan-t5-small"))
    assert flan.inner_dim == 384 and flan.d_model == 512


def test_absent_tie_word_embeddings_means_tied():
    cfg = t5_config("t5-small")
    cfg.pop("tie_word_embeddings", None)
    assert ModelArgs.from_dict(cfg).tie_word_embeddings


def test_num_decoder_layers_defaults_to_num_layers():
    cfg = t5_config("t5-small")
    cfg.pop("num_decoder_layers")
    assert ModelArgs.from_dict(cfg).num_decoder_layers == 6
    assert ModelArgs.from_dict({**cfg, "num_decoder_layers": 2}).num_decoder_layers == 2


def test_bad_kv_heads_lists_valid_values():
    with pytest.raises(ConfigError, match=r"valid values: 1, 2, 3, 6"):
        ModelArgs.from_dict({**t5_config("flan-t5-small"), "num_key_value_heads": 4})


def test_not_t5_config():
    with pytest.raises(ConfigError):
        ModelArgs.from_dict({"model_type": "bert", "hidden_size": 768})
    with pytest.raises(ConfigError, match="model_type='bart'"):
        ModelArgs.from_dict({**t5_config("t5-small"), "model_type": "bart"})


def test_legacy_flan_gelu_config_is_gated_when_weights_are():
    cfg = {**t5_config("flan-t5-small"), "feed_forward_proj": "gelu"}
    weights = {"encoder.block.0.layer.1.DenseReluDense.wi_0.weight": None}
    fixed = fix_feed_forward(cfg, weights)
    assert fixed["feed_forward_proj"] == "gated-gelu"
    assert ModelArgs.from_dict(fixed).activation == "gelu_new"
    # A relu config without gated weights stays as it is; a gated config without them is refused.
    assert fix_feed_forward(t5_config("t5-small"), {})["feed_forward_proj"] == "relu"
    with pytest.raises(CheckpointError, match="no gated FFN weights"):
        fix_feed_forward(t5_config("flan-t5-small"), {})
