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


BAD_CONFIGS = [
    ("num_heads", None, r"num_heads must be an integer, not None"),
    ("num_heads", "8", r"num_heads must be an integer, not '8'"),
    ("num_heads", [8], r"num_heads must be an integer, not \[8\]"),
    ("num_heads", 8.0, r"num_heads must be an integer, not 8.0"),
    ("num_heads", True, r"num_heads must be an integer, not True"),
    ("num_heads", 0, r"num_heads must be between 1 and \d+, not 0"),
    ("num_heads", -8, r"num_heads must be between 1 and \d+, not -8"),
    ("d_model", 0, r"d_model must be between 1 and \d+, not 0"),
    ("d_model", -512, r"d_model must be between 1"),
    ("d_model", None, r"d_model must be an integer, not None"),
    ("d_kv", "64", r"d_kv must be an integer"),
    ("d_ff", 0, r"d_ff must be between 1"),
    ("vocab_size", 0, r"vocab_size must be between 1"),
    ("vocab_size", 10**9, r"vocab_size must be between 1 and 4194304, not 1000000000"),
    ("num_layers", 0, r"num_layers must be between 1"),
    ("num_layers", -1, r"num_layers must be between 1"),
    ("num_layers", 10**5, r"num_layers must be between 1 and 1024, not 100000"),
    ("num_layers", 10**6, r"num_layers must be between 1 and 1024, not 1000000"),
    ("num_decoder_layers", "2", r"num_decoder_layers must be an integer"),
    ("num_key_value_heads", 0, r"num_key_value_heads must be between 1"),
    ("relative_attention_num_buckets", None, r"relative_attention_num_buckets must be an integer"),
    ("relative_attention_max_distance", 0, r"relative_attention_max_distance must be between 1"),
    ("layer_norm_epsilon", "1e-6", r"layer_norm_epsilon must be a number"),
    ("layer_norm_epsilon", 0, r"layer_norm_epsilon must be > 0"),
    ("feed_forward_proj", ["relu"], r"feed_forward_proj must be a string"),
    ("feed_forward_proj", None, r"feed_forward_proj must be a string"),
    ("model_type", None, r"model_type must be a string"),
    ("eos_token_id", -1, r"eos_token_id=-1 is not a token id of the 32128-token vocabulary"),
    ("pad_token_id", 40000, r"pad_token_id=40000 is not a token id"),
    ("decoder_start_token_id", "0", r"decoder_start_token_id must be an integer"),
    ("decoder_head_order", "0123", r"decoder_head_order must be a list of lists of integers"),
    ("conversion", [], r"conversion must be an object"),
]


@pytest.mark.parametrize("key,value,pattern", BAD_CONFIGS)
def test_malformed_settings_are_config_errors_naming_the_setting(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ModelArgs.from_dict({**t5_config("t5-small"), key: value})


def test_a_config_that_is_not_an_object_is_a_config_error():
    for config in ([1, 2], None, "t5"):
        with pytest.raises(ConfigError, match="must hold a JSON object"):
            ModelArgs.from_dict(config)


def test_a_model_bigger_than_the_machine_is_refused_before_allocating(monkeypatch):
    import time

    from mlx_mqa.models import config

    monkeypatch.setattr(config, "machine_memory", lambda: 4 << 30)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"of 16,[\d,]+ weights: at least 7.\d GiB .* 4.0 GiB of memory"):
        ModelArgs.from_dict({**t5_config("t5-small"), "vocab_size": 4_000_000, "d_model": 4096})
    assert time.perf_counter() - t0 < 1
    ModelArgs.from_dict(t5_config("t5-v1_1-large"))  # a real one fits


@pytest.mark.parametrize("key,value,pattern", [BAD_CONFIGS[i] for i in (0, 5, 16, 24)])
def test_malformed_config_json_is_a_one_line_error_of_the_clis(tmp_path, key, value, pattern):
    import json

    from click.testing import CliRunner

    from mlx_mqa.checkpoint import load_model
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint
    from mlx_mqa.convert import main

    src = save_random_checkpoint(t5_config("t5-small", num_layers=1, num_decoder_layers=1), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, key: value}))
    r = CliRunner().invoke(main, ["--hf-path", str(src), "--mlx-path", str(tmp_path / "out")])
    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert r.exit_code == 2 and len(errors) == 1 and errors[0].startswith("error: config.json: "), r.output
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=pattern):
        load_model(src)
