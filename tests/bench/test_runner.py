"""The run's settings checks, in the order a run makes them."""

import pytest

from mlx_mqa.bench.config import BenchConfig
from mlx_mqa.bench.runner import check_decode_path, check_settings, load_quality_jobs
from mlx_mqa.errors import ConfigError, InputError


def test_decode_path():
    assert [check_decode_path(p) for p in ("auto", "compiled", "eager")] == ["auto", "compiled", "eager"]
    with pytest.raises(ConfigError, match=r"unknown --decode 'fast'; choose from \['auto', 'compiled', 'eager'\]"):
        check_decode_path("fast")


def test_settings_checks():
    check_settings(BenchConfig(num_beams=(1, 4)))
    with pytest.raises(InputError, match="num_beams must be a positive integer, got 0"):
        check_settings(BenchConfig(num_beams=(1, 0)))
    with pytest.raises(ConfigError, match="--repeats must be >= 1"):
        check_settings(BenchConfig(repeats=0))


def test_quality_jobs_lengths():
    jobs = load_quality_jobs(BenchConfig(datasets=("bundled:cnn_dailymail", "bundled:arxiv"), limit=2))
    assert [(j.label, len(j.examples), j.input_len, j.output_len) for j in jobs] == [
        ("bundled:cnn_dailymail", 2, 512, 256),
        ("bundled:arxiv", 2, 2048, 512),
    ]
    jobs = load_quality_jobs(BenchConfig(datasets=("bundled:xsum",), limit=1, quality_lengths=(96, 12)))
    assert [(j.input_len, j.output_len) for j in jobs] == [(96, 12)]


def test_config_to_dict():
    d = BenchConfig(lengths=((512, 64), (2048, 64)), quality_lengths=(96, 12), quantize=(8,)).to_dict()
    assert d["lengths"] == ["512x64", "2048x64"] and d["quality_lengths"] == "96x12" and d["quantize"] == [8]
    assert d["datasets"] == ["bundled:cnn_dailymail"] and d["num_beams"] == [1]
