"""`--refine`: distillation of the merged model toward the multi-head one on the calibration text."""

import json

import mlx.core as mx
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten

from mlx_mqa import load_model
from mlx_mqa.checkpoint.random_init import save_random_checkpoint
from mlx_mqa.conversion import convert, convert_model
from mlx_mqa.conversion.calibration import calibrate, read_pairs, tokenize_pairs
from mlx_mqa.conversion.refine import divergence, refine, refine_batches
from mlx_mqa.convert import main as convert_cli
from tests.helpers import t5_config

CAL = ["--calibration-samples", "8", "--calibration-lengths", "96x24"]


@pytest.fixture(scope="module")
def source(tmp_path_factory, tokenizer):
    cfg = t5_config(
        "flan-t5-small", num_layers=1, num_decoder_layers=2, d_model=128, d_kv=32, d_ff=256, vocab_size=len(tokenizer)
    )
    return save_random_checkpoint(cfg, tmp_path_factory.mktemp("refine") / "src", tokenizer=tokenizer, seed=3)


@pytest.fixture(scope="module")
def cal_batches(tokenizer):
    examples = tokenize_pairs(tokenizer, read_pairs("bundled", 8), 96, 24, "summarize: ")
    return refine_batches(examples, 4)


def weights(model):
    return dict(tree_flatten(model.parameters()))


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)


@pytest.mark.parametrize("pool,params", [("mean", "attention"), ("svd-q", "attention+norms"), ("mean", "all")])
def test_refine_lowers_the_calibration_kl(pool, params, source, tokenizer, cal_batches):
    teacher = load_model(source)
    stats = calibrate(teacher, tokenizer, samples=8, max_input=96, max_target=24) if pool != "mean" else None
    student = convert_model(teacher, 1, pool, stats=stats)
    before = divergence(student, teacher, cal_batches)["kl"]
    rec = refine(student, teacher, cal_batches, 12, params, lr=1e-3, eval_every=4)
    after = divergence(student, teacher, cal_batches)["kl"]
    assert rec["kl_before"] == pytest.approx(before, rel=1e-4)
    assert rec["kl_after"] == pytest.approx(after, rel=1e-4)
    assert after < before and rec["kept"] == "refined" and rec["best_step"] > 0
    # the teacher is untouched
    assert same(weights(teacher), weights(load_model(source)))


def test_refine_keeps_the_merge_when_no_step_improves(source, cal_batches):
    teacher = load_model(source)
    student = convert_model(teacher, 2, "mean")
    merged = weights(student)
    rec = refine(student, teacher, cal_batches, 3, "all", lr=50.0)  # a step this large only makes it worse
    assert rec["kept"].startswith("merged") and rec["best_step"] == 0 and rec["kl_after"] == rec["kl_before"]
    assert same(weights(student), merged)


def test_only_the_chosen_parameters_change(source, cal_batches):
    teacher = load_model(source)
    student = convert_model(teacher, 2, "mean")
    merged = weights(student)
    refine(student, teacher, cal_batches, 4, "attention", lr=1e-3, eval_every=2)
    new = weights(student)
    changed = {k for k in new if not mx.array_equal(new[k], merged[k]).item()}
    assert changed and all(k.startswith("decoder.") and k.split(".")[-2] in "qkvo" for k in changed), changed


def run_cli(source, out, *args):
    return CliRunner().invoke(convert_cli, ["--hf-path", str(source), "--mlx-path", str(out), *CAL, *args])


def test_cli_records_the_kl_and_the_refined_model_loads_and_generates(source, tmp_path):
    r = run_cli(source, tmp_path / "mqa", "--kv-heads", "1", "--refine", "6", "--refine-lr", "1e-3")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "mqa" / "config.json").read_text())["conversion"]["refine"]
    assert rec["steps"] == 6 and rec["params"] == "attention" and rec["kl_after"] <= rec["kl_before"]
    assert rec["calibration"]["samples"] == 8 and rec["history"][0]["step"] == 0
    assert "refine: calibration KL" in r.output
    from mlx_mqa.checkpoint.load import load
    from mlx_mqa.decoding.generate import generate

    model, tok = load(tmp_path / "mqa")
    assert model.args.num_key_value_heads == 1
    text = generate(model, tok, "summarize: The cat sat on the mat.", max_new_tokens=5)
    assert isinstance(text, str)
    # refining then quantizing: the record is there, the model loads
    r = run_cli(source, tmp_path / "q", "--kv-heads", "2", "--refine", "2", "-q", "--q-bits", "8")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 8 and "kl_after" in cfg["conversion"]["refine"]
    load_model(tmp_path / "q")


def test_g_equals_h_is_left_unchanged(source, tmp_path):
    assert run_cli(source, tmp_path / "plain", "--dtype", "float32").exit_code == 0
    r = run_cli(source, tmp_path / "refined", "--dtype", "float32", "--refine", "5")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "refined" / "config.json").read_text())["conversion"]["refine"]
    assert "skipped" in rec
    assert same(weights(load_model(tmp_path / "plain")), weights(load_model(tmp_path / "refined")))


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--kv-heads", "1", "--refine", "-1"], 2, "--refine takes a number of steps >= 0"),
        (["--kv-heads", "1", "--refine", "5", "--refine-lr", "0"], 2, "--refine-lr must be a positive number"),
        (["--kv-heads", "1", "--refine", "5", "--calibration", "missing.jsonl"], 4, "does not exist"),
        (["--kv-heads", "1", "--refine", "5", "--refine-params", "everything"], 2, "Invalid value"),
    ],
)
def test_bad_refine_options_are_refused_before_any_work(args, code, message, source, tmp_path, monkeypatch):
    import mlx_mqa.conversion.converter as converter

    def no_work(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(converter, "open_checkpoint", no_work)
    r = run_cli(source, tmp_path / "out", *args)
    assert r.exit_code == code, r.output
    assert message in r.output, r.output
    if "Usage" not in r.output:  # click's own usage errors aside, one `error:` line
        errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0] and r.output.count("error") == 1, r.output
    assert not (tmp_path / "out").exists()


def test_refine_needs_a_tokenizer_for_its_calibration_text(tokenizer, tmp_path):
    cfg = t5_config("flan-t5-small", num_layers=1, num_decoder_layers=1, d_model=64, d_kv=16, d_ff=64, vocab_size=512)
    src = save_random_checkpoint(cfg, tmp_path / "src")  # no tokenizer
    assert convert(str(src), tmp_path / "ok", kv_heads=1).exists()  # mean pooling needs none
    r = CliRunner().invoke(
        convert_cli, ["--hf-path", str(src), "--mlx-path", str(tmp_path / "out"), "--kv-heads", "1", "--refine", "3"]
    )
    assert r.exit_code == 3 and "--refine distils on calibration text" in r.output, r.output
    assert not (tmp_path / "out").exists()
