"""A tiny T5 shape (4 heads, 2+2 layers, the test tokenizer's 4100 ids) and a quick speed-only bench run."""

from click.testing import CliRunner

from mlx_mqa.bench.cli import main as bench_main

TINY = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2, vocab_size=4100)


def run_speed_only(model, out, cache, batch_sizes="1", *extra):
    """The bench CLI timing MHA and MQA of `model` once (no warm-up) at 16 in / 3 out; no PyTorch, no quality."""
    args = ["--model", str(model), "--kv-heads", "H,1", "--no-torch", "--no-quality", "--batch-sizes", batch_sizes]
    args += ["--lengths", "16x3", "--warmup", "0", "--repeats", "1", "--out", str(out), "--cache-dir", str(cache)]
    return CliRunner().invoke(bench_main, [*args, "--no-progress", *extra])
