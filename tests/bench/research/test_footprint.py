"""One speed run's peak memory, measured in a fresh process."""

import pytest

from mlx_mqa.bench.research.footprint import Probe, measure

from ..tiny import TINY


@pytest.fixture(scope="module")
def tiny(hf_checkpoint):
    return hf_checkpoint("t5-small", shared_std=0.05, seed=2, **TINY)


def test_measure_runs_in_a_fresh_process(tiny, tmp_path):
    from mlx_mqa.conversion import convert

    mlx_dir = convert(str(tiny), tmp_path / "mqa", kv_heads=1, dtype="float32")
    one, four = (measure(Probe(str(mlx_dir), "mlx", b, 64, 4)) for b in (1, 4))
    weights = (mlx_dir / "model.safetensors").stat().st_size
    assert one.peak_bytes > weights  # weights and the run, not the libraries
    # K/V of 2 layers, 1 head of 16, (64 + 4) tokens, float32
    assert one.kv_bytes == 2 * 2 * 16 * 68 * 4 and four.kv_bytes == 4 * one.kv_bytes
    assert four.batch == 4 and four.encoder_s > 0 and four.decode_s > 0
    assert one.decode_step == "compiled"  # a small cross K/V: the library's default step is the compiled one


def test_measure_reports_a_failed_child(tmp_path):
    with pytest.raises(Exception, match="mlx run at batch 1 failed"):
        measure(Probe(str(tmp_path / "missing"), "mlx", 1, 8, 2))
