"""The run's settings: their checks before any work, and what the config records."""

import pytest

from mlx_mqa.bench.config import BenchConfig, check_config
from mlx_mqa.errors import ConfigError, InputError


def test_decode_path(tmp_path):
    for p in ("auto", "compiled", "eager"):
        check_config(BenchConfig(decode_path=p, out=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"unknown --decode 'fast'; choose from \['auto', 'compiled', 'eager'\]"):
        check_config(BenchConfig(decode_path="fast", out=str(tmp_path)))


def test_settings_checks(tmp_path):
    check_config(BenchConfig(num_beams=(1, 4), out=str(tmp_path)))
    with pytest.raises(InputError, match="num_beams must be a positive integer, got 0"):
        check_config(BenchConfig(num_beams=(1, 0), out=str(tmp_path)))
    with pytest.raises(ConfigError, match="--repeats must be at least 1, got 0"):
        check_config(BenchConfig(repeats=0, out=str(tmp_path)))


def test_config_to_dict():
    d = BenchConfig(lengths=((512, 64), (2048, 64)), quality_lengths=(96, 12), quantize=(8,)).to_dict()
    assert d["lengths"] == ["512x64", "2048x64"] and d["quality_lengths"] == "96x12" and d["quantize"] == [8]
    assert d["datasets"] == ["bundled:cnn_dailymail"] and d["num_beams"] == [1]


def test_out_is_checked_without_creating_it(tmp_path):
    check_config(BenchConfig(out=str(tmp_path / "a" / "b")))
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("")
    for out, why in ((tmp_path / "f", "is a file"), (tmp_path / "f" / "x", "cannot be created")):
        with pytest.raises(ConfigError, match=f"--out {out} {why}"):
            check_config(BenchConfig(out=str(out)))
