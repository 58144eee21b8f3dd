"""`python -m mlx_mqa.random_checkpoint`, then convert and generate with the result, as the README's example does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlx_mqa.checkpoint.random_init import random_t5_weights
from mlx_mqa.random_checkpoint import config_names, parameter_count, shaped_config

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd):
    # This checkout's package, whatever the venv has installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_make_convert_generate(tmp_path):
    made = run("mlx_mqa.random_checkpoint", "--config", "t5-small", "--layers", "1", "--seed", "3", "--out", "tiny-t5",
               cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "gibberish" in made.stderr
    out = tmp_path / "tiny-t5"
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_layers"], cfg["num_decoder_layers"], cfg["random_weights_seed"]) == (1, 1, 3)
    assert cfg["d_model"] == 512 and cfg["vocab_size"] == 32128  # t5-small's real width and vocabulary
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert "random" in (out / "README.md").read_text().lower()

    again = run("mlx_mqa.random_checkpoint", "--config", "t5-small", "--layers", "1", "--out", "tiny-t5", cwd=tmp_path)
    assert again.returncode == 3 and "not empty" in again.stderr
    assert json.loads((out / "config.json").read_text())["random_weights_seed"] == 3  # left as it was

    conv = run("mlx_mqa.convert", "--hf-path", "tiny-t5", "--mlx-path", "tiny-t5-mqa", "--kv-heads", "1", cwd=tmp_path)
    assert conv.returncode == 0, conv.stderr
    assert json.loads((tmp_path / "tiny-t5-mqa" / "config.json").read_text())["num_key_value_heads"] == 1

    gen = run("mlx_mqa.generate", "--model", "tiny-t5-mqa", "--prompt", "summarize: The cat sat on the mat.", "-m", "8",
              cwd=tmp_path)  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.strip()  # gibberish, but decodable text: ids past the bundled tokenizer are never picked


def test_help_lists_shapes_and_says_random(tmp_path):
    h = run("mlx_mqa.random_checkpoint", "--help", cwd=tmp_path)
    assert h.returncode == 0
    assert "RANDOM" in h.stdout and "gibberish" in h.stdout
    assert all(name in h.stdout for name in config_names())


def test_bad_options(tmp_path):
    (tmp_path / "a-file").write_text("x")
    bad = run("mlx_mqa.random_checkpoint", "--config", "t5-small", "--out", "a-file", cwd=tmp_path)
    assert bad.returncode == 3 and "not a directory" in bad.stderr
    unknown = run("mlx_mqa.random_checkpoint", "--config", "t5-tiny", "--out", "x", cwd=tmp_path)
    assert unknown.returncode == 2 and not (tmp_path / "x").exists()


def test_parameter_count_matches_the_weights():
    for name in ("t5-small", "flan-t5-small", "t5-large-lm-adapt"):  # tied/untied, relu/gated, inner != d_model
        cfg = shaped_config(name, layers=1)
        assert parameter_count(cfg) == sum(int(np.prod(w.shape)) for w in random_t5_weights(cfg).values())
