"""Training checkpoints are model directories: they load, keep the model's config, shard, and export."""

import json

import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_mqa
from mlx_mqa.checkpoint import files
from mlx_mqa.errors import CheckpointError
from mlx_mqa.train import checkpoints
from mlx_mqa.train.checkpoints import OPT_DIR, STATE_FILE, export_model, list_checkpoints

from .tiny import span_trainer, tiny_model


def _saved(tokenizer, run_dir, model=None, steps=2):
    span_trainer(tokenizer, run_dir, model=model, steps=steps, keep_tokenizer=True).train()
    return list_checkpoints(run_dir)[-1]


def test_checkpoint_loads_and_generates(tokenizer, tmp_path):
    ckpt = _saved(tokenizer, tmp_path / "r")
    model, tok = mlx_mqa.load(ckpt)
    assert model.args.num_key_value_heads == 2
    out = mlx_mqa.generate(model, tok, ["summarize: the cat sat on the mat"], max_new_tokens=4)
    assert isinstance(out[0], str)


def test_checkpoint_keeps_the_converted_models_config(tokenizer, tmp_path, converted):
    source = json.loads((converted / "config.json").read_text())
    ckpt = _saved(tokenizer, tmp_path / "r", model=mlx_mqa.load_model(converted))
    config = json.loads((ckpt / "config.json").read_text())
    assert config["conversion"] == source["conversion"] and config["training"] == {"step": 2, "dtype": "float32"}
    model = mlx_mqa.load_model(ckpt)
    assert model.args.num_key_value_heads == 2 and model.args.conversion["pool"] == "mean"


def test_sharded_checkpoint_resumes_and_loads(tokenizer, tmp_path, monkeypatch):
    # One shard per tensor, as a model over the 5 GB shard size would have.
    monkeypatch.setattr(checkpoints, "save_mlx_weights", lambda d, w: files.save_mlx_weights(d, w, max_bytes=1))
    ckpt = _saved(tokenizer, tmp_path / "r")
    assert (ckpt / "model.safetensors.index.json").exists() and not (ckpt / "model.safetensors").exists()
    tr = span_trainer(tokenizer, tmp_path / "r", steps=3)
    assert tr.resume() == ckpt and tr.step == 2
    loaded = mlx_mqa.load_model(ckpt)
    for (k, a), (_, b) in zip(tree_flatten(tr.model.parameters()), tree_flatten(loaded.parameters())):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=k)


def test_export_is_a_plain_model_directory(tokenizer, tmp_path):
    from mlx_mqa.conversion import convert

    ckpt = _saved(tokenizer, tmp_path / "r", model=tiny_model(4))
    out = export_model(ckpt, tmp_path / "model")
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert STATE_FILE not in names and OPT_DIR not in names
    model, tok = mlx_mqa.load(out)
    assert model.args.num_key_value_heads == 4
    with pytest.raises(CheckpointError, match="already exists"):
        export_model(ckpt, out)
    mqa = convert(str(out), str(tmp_path / "mqa"), kv_heads=1, pool="mean", dtype="float32")
    assert mlx_mqa.load_model(mqa).args.num_key_value_heads == 1


def test_export_refuses_an_incomplete_checkpoint(tokenizer, tmp_path):
    ckpt = _saved(tokenizer, tmp_path / "r")
    (ckpt / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="not a complete training checkpoint"):
        export_model(ckpt, tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    "change,pattern",
    [
        (lambda s: [s], "not a JSON object"),
        (lambda s: {**s, "step": -1}, r"step -1 is not a count of updates"),
        (lambda s: {**s, "step": "2"}, r"step '2' is not a count of updates"),
        (lambda s: {**s, "step": 3}, r"step 3 in the checkpoint of step 2"),
        (lambda s: {**s, "losses": None}, r"losses is not a JSON array"),
        (lambda s: {**s, "losses": ["a", "b"]}, r"losses must hold one number per step \(2\)"),
        (lambda s: {**s, "data_state": []}, r"data_state is not a JSON object"),
        (lambda s: {**s, "settings": "x"}, r"settings is not a JSON object"),
        (lambda s: {**s, "evals": [1]}, r"evals must hold objects"),
        (lambda s: {**s, "tokens_seen": -5}, r"tokens_seen -5 is not a non-negative number"),
        (lambda s: {**s, "data_state": {"sampler": {"epoch": "x"}}}, r"the data position in trainer_state.json"),
    ],
)
def test_a_tampered_trainer_state_is_refused_on_resume(tokenizer, tmp_path, change, pattern):
    ckpt = _saved(tokenizer, tmp_path / "r")
    state_file = ckpt / STATE_FILE
    state_file.write_text(json.dumps(change(json.loads(state_file.read_text()))))
    with pytest.raises(CheckpointError, match=pattern):
        span_trainer(tokenizer, tmp_path / "r", steps=4, keep_tokenizer=True).resume()


def test_a_checkpoint_past_the_runs_steps_is_refused(tokenizer, tmp_path):
    from mlx_mqa.errors import ConfigError

    _saved(tokenizer, tmp_path / "r", steps=3)
    trainer = span_trainer(tokenizer, tmp_path / "r", steps=2, keep_tokenizer=True)
    with pytest.raises(ConfigError, match=r"ckpt-0000003 is at step 3, past --steps 2"):
        trainer.resume()
    assert trainer.step == 0
