"""Calibrated conversion of whole checkpoints: exactness, head permutations, calibration data and bad input."""

import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten

from mlx_mqa import load_model
from mlx_mqa.checkpoint.files import save_model
from mlx_mqa.checkpoint.random_init import save_random_checkpoint
from mlx_mqa.conversion import Calibration, convert, convert_model
from mlx_mqa.conversion.calibration import read_pairs
from mlx_mqa.convert import main as convert_cli
from mlx_mqa.errors import ConfigError, InputError
from mlx_mqa.models.config import ModelArgs
from mlx_mqa.models.t5 import Model
from tests.helpers import batch, t5_config

CAL = Calibration(samples=12, max_input=128, max_target=64)


@pytest.fixture(scope="module")
def source(tmp_path_factory, tokenizer):
    cfg = t5_config("flan-t5-small", num_layers=1, num_decoder_layers=2, vocab_size=len(tokenizer))
    return save_random_checkpoint(cfg, tmp_path_factory.mktemp("cal") / "src", tokenizer=tokenizer, shared_std=0.05)


def logits(model, tokenizer):
    ids, mask = batch(tokenizer)
    dec = mx.array(np.tile(np.array([[0, 7, 99, 4, 31]], np.int32), (ids.shape[0], 1)))
    return np.array(model(mx.array(ids), dec, mx.array(mask)))


@pytest.mark.parametrize("pool", ["fit", "svd", "svd-q"])
def test_as_many_kv_heads_as_heads_gives_back_the_weights(pool, source, tmp_path):
    mha = load_model(source)
    out = load_model(convert(str(source), tmp_path / pool, pool=pool, calibration=CAL))
    a, b = dict(tree_flatten(mha.parameters())), dict(tree_flatten(out.parameters()))
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_svd_reproduces_the_model_when_paired_heads_span_d_directions(source, tokenizer, tmp_path):
    mha = load_model(source)
    rng = np.random.default_rng(1)
    H, d = mha.args.num_heads, mha.args.d_kv
    w = dict(tree_flatten(mha.parameters()))
    for name in [k for k in w if k.startswith("decoder") and k.endswith(("k.weight", "v.weight"))]:
        heads = np.array(w[name]).reshape(H, d, -1)
        for h in range(1, H, 2):
            heads[h] = rng.standard_normal((d, d)).astype(np.float32) @ heads[h - 1]
        w[name] = mx.array(heads.reshape(H * d, -1))
    mha.load_weights(list(w.items()))
    from mlx_mqa.conversion.calibration import calibrate

    stats = calibrate(mha, tokenizer, samples=12, max_input=128, max_target=64)
    ref = logits(mha, tokenizer)
    for pool in ("svd", "svd-q"):
        out = convert_model(mha, H // 2, pool, stats=stats)
        np.testing.assert_allclose(logits(out, tokenizer), ref, atol=2e-4 * np.abs(ref).max())
    mean = convert_model(mha, H // 2, "mean")
    assert np.abs(logits(mean, tokenizer) - ref).max() > 100 * 2e-4 * np.abs(ref).max()


def test_a_head_permutation_keeps_the_function_and_survives_save_load(source, tokenizer, tmp_path):
    mha = load_model(source)
    H, d, L = mha.args.num_heads, mha.args.d_kv, mha.args.num_decoder_layers
    rng = np.random.default_rng(2)
    orders = [rng.permutation(H).tolist() for _ in range(L)]
    w = {k: np.array(v) for k, v in tree_flatten(mha.parameters())}
    for i, order in enumerate(orders):
        for j, name in ((0, "SelfAttention"), (1, "EncDecAttention")):
            p = f"decoder.block.{i}.layer.{j}.{name}"
            for proj in "qkv":
                w[f"{p}.{proj}.weight"] = w[f"{p}.{proj}.weight"].reshape(H, d, -1)[order].reshape(H * d, -1)
            o = w[f"{p}.o.weight"]
            w[f"{p}.o.weight"] = o.reshape(o.shape[0], H, d)[:, order].reshape(o.shape[0], -1)
    permuted = Model(ModelArgs.from_dict(dict(mha.args.to_dict(), decoder_head_order=orders)))
    permuted.load_weights([(k, mx.array(v)) for k, v in w.items()])
    ref = logits(mha, tokenizer)
    np.testing.assert_allclose(logits(permuted, tokenizer), ref, atol=1e-5 * np.abs(ref).max())
    loaded = load_model(save_model(tmp_path / "perm", permuted, tokenizer))
    assert loaded.args.decoder_head_order == orders
    np.testing.assert_array_equal(logits(loaded, tokenizer), logits(permuted, tokenizer))


def test_similar_grouping_is_recorded_and_loads(source, tokenizer, tmp_path):
    out = convert(str(source), tmp_path / "sim", kv_heads=2, pool="fit", grouping="similar", calibration=CAL)
    cfg = json.loads((out / "config.json").read_text())
    rec = cfg["conversion"]
    assert rec["grouping"] == "similar" and rec["pool"] == "fit"
    assert rec["calibration"]["source"] == "bundled" and rec["calibration"]["samples"] == 12
    assert len(rec["calibration"]["errors"]) == 2 * cfg["num_decoder_layers"]
    assert all(e["error"] <= e["mean_error"] * (1 + 1e-9) for e in rec["calibration"]["errors"])
    orders = cfg["decoder_head_order"]
    assert orders is None or all(sorted(o) == list(range(cfg["num_heads"])) for o in orders)
    model = load_model(out)
    assert model.args.num_key_value_heads == 2 and np.isfinite(logits(model, tokenizer)).all()


def test_calibration_sources(tmp_path):
    assert len(read_pairs("bundled")) == 24
    f = tmp_path / "cal.jsonl"
    f.write_text(json.dumps({"text": "a plain text document"}) + "\n" + json.dumps({"article": "x", "abstract": "y"}))
    assert read_pairs(str(f)) == [("a plain text document", None), ("x", "y")]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("first block\n\nsecond block")
    assert [p for p, _ in read_pairs(str(tmp_path / "dir"))] == ["first block", "second block"]
    assert len(read_pairs("bundled", limit=5)) == 5


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--pool", "fit", "--calibration", "missing.jsonl"], 4, "calibration source missing.jsonl does not exist"),
        (["--pool", "svd", "--calibration", "EMPTY"], 4, "holds no text"),
        (["--pool", "fit", "--calibration-samples", "1", "--calibration-lengths", "16x4"], 4, "a stable fit needs"),
        (["--grouping", "similar", "--kv-heads", "4"], 2, "--kv-heads 4 does not divide the 6 attention heads"),
        (["--pool", "fit", "--groups-in", "all"], 2, "convert the decoder only"),
        (["--pool", "random", "--grouping", "similar"], 2, "means nothing"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, code, message, source, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    r = CliRunner().invoke(convert_cli, ["--hf-path", str(source), "--mlx-path", str(tmp_path / "out"), *args])
    assert r.exit_code == code, r.output
    assert r.output.count("error: ") == 1 and message in r.output.split("error: ")[1].splitlines()[0], r.output
    assert not (tmp_path / "out").exists()


def test_library_refuses_calibrated_methods_without_statistics(source):
    with pytest.raises(ConfigError, match="need calibration statistics"):
        convert_model(load_model(source), 2, "fit")
    with pytest.raises(InputError, match="at least 1"):
        from mlx_mqa.conversion.calibration import calibrate

        calibrate(load_model(source), None, samples=0)
