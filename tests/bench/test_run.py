"""The default run's steps that need no model: the quality jobs and their generation lengths."""

from mlx_mqa.bench.config import BenchConfig
from mlx_mqa.bench.run import quality_jobs


def test_quality_jobs_lengths():
    jobs = quality_jobs(BenchConfig(datasets=("bundled:cnn_dailymail", "bundled:arxiv"), limit=2))
    assert [(j.label, len(j.examples), j.input_len, j.output_len) for j in jobs] == [
        ("bundled:cnn_dailymail", 2, 512, 256),
        ("bundled:arxiv", 2, 2048, 512),
    ]
    jobs = quality_jobs(BenchConfig(datasets=("bundled:xsum",), limit=1, quality_lengths=(96, 12)))
    assert [(j.input_len, j.output_len) for j in jobs] == [(96, 12)]
