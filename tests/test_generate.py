"""`python -m mlx_mqa.generate`: streams one prompt, batches several, and refuses bad input in one line."""

import re
import subprocess
import sys

import pytest
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


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--repetition-penalty", "-2"], r"--repetition-penalty must be > 0 \(1: none\), not -2.0"),
        (["--temp", "-1"], r"--temp must be >= 0 \(0: greedy\), not -1.0"),
        (["--temp", "nan"], r"--temp must be >= 0"),
        (["--top-p", "5"], r"--top-p must be in \[0, 1\] \(0: off\), not 5.0"),
        (["--min-p", "-0.1"], r"--min-p must be in \[0, 1\]"),
        (["--top-k", "-1"], r"--top-k must be at least 0, not -1"),
        (["--max-new-tokens", "0"], r"--max-new-tokens must be at least 1, not 0"),
        (["--max-tokens", "-3"], r"--max-new-tokens must be at least 1, not -3"),
        (["--num-beams", "0"], r"--num-beams must be at least 1, not 0"),
        (["--no-repeat-ngram-size", "-1"], r"--no-repeat-ngram-size must be at least 0"),
        (["--max-input-tokens", "0", "--truncate"], r"--max-input-tokens must be at least 1, not 0"),
        (["--num-beams", "3", "--temp", "0.7", "--top-k", "5"], r"3\) samples nothing: drop --temp, --top-k$"),
        (["--early-stopping", "true"], r"--length-penalty and --early-stopping apply to beam search; add --num-beams"),
        (["--length-penalty", "2"], r"apply to beam search"),
    ],
)
def test_bad_options_are_refused_before_loading_and_named(tmp_path, args, pattern):
    r = CliRunner().invoke(cli.main, ["--model", str(tmp_path / "nope"), "-p", "summarize: x", *args])
    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert r.exit_code == 2 and len(errors) == 1 and "Traceback" not in r.output, r.output
    assert re.search(pattern, errors[0]), errors[0]


def test_a_binary_file_is_an_input_error(tmp_path):
    f = tmp_path / "prompts.bin"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    r = CliRunner().invoke(cli.main, ["--model", str(tmp_path / "nope"), "--file", str(f)])
    assert r.exit_code == 4 and r.output.startswith(f"error: --file {f} is not UTF-8 text;")


def test_library_names_and_beam_options(tmp_path, hf_checkpoint, tokenizer):
    from mlx_mqa.decoding.sample_utils import make_logits_processors

    src = hf_checkpoint("flan-t5-small", shared_std=0.05, vocab_size=len(tokenizer))
    path = convert(str(src), tmp_path / "gqa", kv_heads=2, dtype="float32")
    model, tok = mlx_mqa.load(path)
    assert "-m, --max-new-tokens, --max-tokens" in CliRunner().invoke(cli.main, ["--help"]).output
    prompts = ["summarize: The cat sat on the mat.", "summarize: Stocks fell."]
    base = ["--model", str(path), "-p", prompts[0], "-p", prompts[1], "--num-beams", "3", "--max-new-tokens", "10"]
    for early, value in (("true", True), ("never", "never")):
        r = CliRunner().invoke(cli.main, base + ["--early-stopping", early, "--repetition-penalty", "1.5"])
        assert r.exit_code == 0, r.output
        procs = make_logits_processors(None, 1.5)
        kw = dict(max_new_tokens=10, num_beams=3, early_stopping=value, logits_processors=procs)
        assert r.output.splitlines() == mlx_mqa.generate(model, tok, prompts, **kw)
