"""The bench comparing conversion methods (--pool, --grouping) on a tiny random model: names, cache paths,
which variants are timed, which have a PyTorch token reference, the CSV columns, and bad combinations."""

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_mqa.bench.cli import main as bench_main
from mlx_mqa.bench.results import QUALITY_COLUMNS, SPEED_COLUMNS

from .tiny import TINY, run_speed_only

# Calibration small enough for a test: 4 bundled documents, 64 -> 16 tokens.
SMALL_CALIBRATION = ["--calibration-samples", "4", "--calibration-lengths", "64x16"]


@pytest.fixture(scope="module")
def model(hf_checkpoint):
    return hf_checkpoint("t5-small", shared_std=0.05, seed=2, **TINY)


@pytest.fixture(scope="module")
def mean_and_fit(model, tmp_path_factory):
    """MHA, GQA-2 and GQA-2 fit with the PyTorch references, speed and quality, all tiny."""
    root = tmp_path_factory.mktemp("bench_methods")
    out = root / "out"
    args = ["--model", str(model), "--kv-heads", "H,2", "--pool", "mean,fit", *SMALL_CALIBRATION]
    args += ["--batch-sizes", "1", "--lengths", "16x3", "--warmup", "0", "--repeats", "1"]
    args += ["--limit", "2", "--quality-lengths", "64x8", "--quality-batch-size", "2", "--bootstrap", "50"]
    args += ["--out", str(out), "--cache-dir", str(root / "cache"), "--no-plots", "--no-progress"]
    result = CliRunner().invoke(bench_main, args)
    return result, out


def test_variants_names_and_cache_paths(mean_and_fit):
    result, out = mean_and_fit
    assert result.exit_code == 0, result.output + repr(result.exception)
    res = json.loads((out / "results.json").read_text())
    v = {x["name"]: x for x in res["variants"]}
    assert [(x["name"], x["pool"], x["grouping"], x["timed"]) for x in res["variants"]] == [
        ("MHA", "mean", "contiguous", True),
        ("GQA-2", "mean", "contiguous", True),
        ("GQA-2 fit", "fit", "contiguous", False),
    ]
    assert Path(v["GQA-2"]["path"]).name == "kv2-float32-v1"
    assert Path(v["GQA-2 fit"]["path"]).name.startswith("kv2-float32-fit-cal")
    conversion = json.loads((Path(v["GQA-2 fit"]["path"]) / "config.json").read_text())["conversion"]
    assert conversion["pool"] == "fit" and conversion["calibration"]["samples_requested"] == 4
    assert res["settings"]["pool"] == ["mean", "fit"] and res["settings"]["grouping"] == "contiguous"


def test_only_mean_variants_are_timed(mean_and_fit):
    result, out = mean_and_fit
    res = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in res["speed"]] == ["MHA", "GQA-2", "torch MHA"]
    assert {(r["pool"], r["grouping"]) for r in res["speed"]} == {("mean", "contiguous")}
    assert "not timed: GQA-2 fit" in res["speed_note"] and res["speed_note"] in res["notes"]
    assert result.output.count("Speed is timed for MHA and the mean variants only") == 1


def test_quality_rows_and_references(mean_and_fit):
    result, out = mean_and_fit
    res = json.loads((out / "results.json").read_text())
    q = {(r["backend"], r["variant"]): r for r in res["quality"]}
    assert list(q) == [("mlx", "MHA"), ("mlx", "GQA-2"), ("mlx", "GQA-2 fit"), ("torch", "MHA"), ("torch", "GQA-2")]
    assert q[("mlx", "GQA-2")]["reference_variant"] == "torch GQA-2"
    assert q[("mlx", "GQA-2")]["tokens_match_reference"]["total"] == 2
    fit = q[("mlx", "GQA-2 fit")]
    assert (fit["pool"], fit["grouping"], fit["n"]) == ("fit", "contiguous", 2)
    assert fit["reference_variant"] is None and fit["tokens_match_reference"] is None
    assert all(r["rouge_meaningful"] is False for r in res["quality"])
    assert "GQA-2 fit" in result.output and "MEANINGLESS" in result.output
    assert "only mean variants in contiguous groups are compared with it; not GQA-2 fit." in result.output
    assert res["files"]["predictions"]["mlx:GQA-2 fit:bundled:cnn_dailymail"].endswith("__mlx__GQA-2_fit.jsonl")
    rows = {(r["backend"], r["variant"]): r for r in csv.DictReader(open(out / "quality.csv"))}
    assert list(next(iter(rows.values()))) == QUALITY_COLUMNS
    assert (rows[("mlx", "GQA-2 fit")]["pool"], rows[("mlx", "GQA-2 fit")]["reference_variant"]) == ("fit", "")
    assert rows[("mlx", "GQA-2 fit")]["tokens_identical"] == "" and rows[("mlx", "GQA-2")]["tokens_identical"]
    speed = list(csv.DictReader(open(out / "speed.csv")))
    assert list(speed[0]) == SPEED_COLUMNS and {r["pool"] for r in speed} == {"mean"}


def test_only_calibrated_pools_time_the_first(model, tmp_path):
    r = run_speed_only(model, tmp_path / "out", tmp_path / "cache", "1", "--pool", "fit,svd", *SMALL_CALIBRATION)
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [x["name"] for x in res["variants"]] == ["MHA", "MQA fit", "MQA svd"]
    speed = {s["variant"]: s for s in res["speed"]}
    assert list(speed) == ["MHA", "MQA fit"] and speed["MQA fit"]["baseline"] == "MHA"
    assert speed["MQA fit"]["pool"] == "fit" and speed["MQA fit"]["kv_heads"] == 1
    assert "the svd variants have the same shapes" in res["speed_note"] and "not timed: MQA svd" in res["speed_note"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pool", "random", "--grouping", "similar"], "error: --pool random ignores the heads"),
        (["--pool", "mean,best"], "error: unknown --pool 'best'; choose from mean, first, random, fit, svd, svd-q"),
        (["--grouping", "sorted"], "error: unknown --grouping 'sorted'; choose from contiguous, similar"),
    ],
)
def test_bad_methods_fail_before_any_work(tmp_path, args, message):
    cache = tmp_path / "cache"
    r = CliRunner().invoke(bench_main, [*args, "--cache-dir", str(cache), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().startswith(message) and len(r.output.strip().splitlines()) == 1, r.output
    assert not cache.exists() and not (tmp_path / "o").exists()


def test_help_explains_methods():
    r = CliRunner().invoke(bench_main, ["--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for needle in ("--pool TEXT", "mean,fit,svd", "svd-q", "--grouping [contiguous|similar]", "--calibration-samples"):
        assert needle in text, needle
