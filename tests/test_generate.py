"""`python -m mlx_mqa.generate`: streams one prompt, batches several, and refuses bad input in one line."""

import subprocess
import sys

from click.testing import CliRunner

import mlx_mqa
from mlx_mqa.conversion import convert
from mlx_mqa.generate import main

cli = sys.modules["mlx_mqa.generate"]


def test_import_keeps_generate_the_function():
    assert callable(mlx_mqa.generate) and mlx_mqa.generate is cli.generate and cli.main is main


def test_streams_text_equal_to_generate(tmp_path, hf_checkpoint, tokenizer):
    src = hf_checkpoint("flan-t5-small", shared_std=0.05, vocab_size=len(tokenizer))
    path = convert(str(src), tmp_path / "gqa", kv_heads=2, dtype="float32")
    prompt = "summarize: The cat sat on the mat."
    model, tok = mlx_mqa.load(path)
    expected = mlx_mqa.generate(model, tok, prompt, max_new_tokens=12)
    r = CliRunner().invoke(cli.main, ["--model", str(path), "--prompt", prompt, "--max-tokens", "12"])
    assert r.exit_code == 0, r.output
    assert r.output == expected + "\n" and expected.strip()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(prompt + "\n\nsummarize: Stocks fell.\n")
    r = CliRunner().invoke(cli.main, ["--model", str(path), "--file", str(prompts), "-m", "12", "--num-beams", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == mlx_mqa.generate(
        model, tok, [prompt, "summarize: Stocks fell."], max_new_tokens=12, num_beams=2
    )


def test_bad_input_is_one_line_with_its_exit_code(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mlx_mqa.generate", "--model", str(tmp_path / "nope"), "-p", "x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 3 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: ") and "does not exist" in r.stderr
    r = CliRunner().invoke(cli.main, ["--model", "x"])
    assert r.exit_code == 4 and "give a --prompt" in r.output
