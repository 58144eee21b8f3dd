"""Data parallel uptraining on mlx.distributed (ring backend, 2 processes on this machine) equals one process
with gradient accumulation over the same global batch; rank 0 alone writes; resume continues exactly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_mqa.errors import CheckpointError
from mlx_mqa.train.checkpoints import STATE_FILE, list_checkpoints

from .conftest import write_corpus
from .tiny import span_trainer

ROOT = Path(__file__).resolve().parents[2]
WORKER = """
import json, sys
from pathlib import Path
import mlx_mqa
from transformers import AutoTokenizer
from tests.train.tiny import span_trainer, stream_trainer

run_dir, steps, resume, corpus = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "resume", sys.argv[4]
tok = AutoTokenizer.from_pretrained(str(Path(mlx_mqa.__file__).parent / "assets" / "tokenizer"))
if corpus == "-":
    tr = span_trainer(tok, run_dir, batch_size=2, steps=steps, save_every=2, keep_checkpoints=5)
else:
    tr = stream_trainer(tok, run_dir, corpus, steps=steps, save_every=2, keep_checkpoints=5)
if resume:
    tr.resume()
tr.train()
(run_dir / f"rank{tr.rank}.json").write_text(json.dumps({"losses": tr.losses, "world": tr.world, "step": tr.step}))
"""

pytestmark = pytest.mark.skipif(shutil.which("mlx.launch") is None, reason="mlx.launch is not installed")


def launch_command(tmp_path, run_dir, steps, mode="fresh", corpus="-"):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = ["mlx.launch", "--backend", "ring", "-n", "2", "--python", sys.executable, str(script)]
    return cmd + [str(run_dir), str(steps), mode, str(corpus)]


def launch(tmp_path, run_dir, steps, mode="fresh", corpus="-"):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = launch_command(tmp_path, run_dir, steps, mode, corpus)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads((run_dir / f"rank{i}.json").read_text()) for i in (0, 1)]


def weights(ckpt: Path):
    return {k: np.array(v) for k, v in mx.load(str(ckpt / "model.safetensors")).items()}


def test_two_ranks_equal_one_process_with_accumulation_and_resume_exactly(tmp_path, tokenizer):
    ranks = launch(tmp_path, tmp_path / "dp", 4)
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["losses"] == ranks[1]["losses"]
    one = span_trainer(tokenizer, tmp_path / "single", batch_size=2, grad_accum=2, steps=4, save_every=2)
    one.train()
    np.testing.assert_allclose(ranks[0]["losses"], one.losses, rtol=2e-5)
    a, b = weights(tmp_path / "dp" / "ckpt-0000004"), weights(tmp_path / "single" / "ckpt-0000004")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=2e-5 * (np.abs(b[k]).max() + 1e-6), err_msg=k)
    # Rank 0 alone writes: one log, checkpoints, no partial directories.
    names = sorted(p.name for p in (tmp_path / "dp").iterdir())
    assert names == ["ckpt-0000002", "ckpt-0000004", "log.jsonl", "rank0.json", "rank1.json"]
    # Stopped after 2 steps, resumed to 4: the same losses and weights as the uninterrupted run.
    launch(tmp_path, tmp_path / "cut", 2)
    resumed = launch(tmp_path, tmp_path / "cut", 4, "resume")
    assert resumed[0]["losses"] == ranks[0]["losses"] and resumed[0]["step"] == 4
    c = weights(tmp_path / "cut" / "ckpt-0000004")
    assert all(np.array_equal(a[k], c[k]) for k in a)
    # A checkpoint of 2 processes is not resumed by 1: the global batch would change.
    with pytest.raises(CheckpointError, match="made by 2 process"):
        span_trainer(tokenizer, tmp_path / "dp", batch_size=2, steps=6).resume()


def test_streamed_shards_resume_every_rank_at_its_own_position(tmp_path, tokenizer):
    corpus = write_corpus(tmp_path / "c.jsonl", n=40)
    whole = launch(tmp_path, tmp_path / "whole", 4, corpus=corpus)
    assert whole[0]["losses"] == whole[1]["losses"]
    state = json.loads((tmp_path / "whole" / "ckpt-0000004" / STATE_FILE).read_text())["data_state"]
    assert len(state["ranks"]) == 2 and state["ranks"][0] != state["ranks"][1]
    launch(tmp_path, tmp_path / "cut", 2, corpus=corpus)
    resumed = launch(tmp_path, tmp_path / "cut", 4, "resume", corpus=corpus)
    assert resumed[0]["losses"] == whole[0]["losses"] and resumed[1]["step"] == 4


def test_a_killed_launch_resumes_from_its_last_checkpoint(tmp_path, tokenizer):
    """SIGKILL to every process of a running launch; --resume continues with the losses of an uninterrupted run."""
    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = launch_command(tmp_path, run, 10**6)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "ckpt-0000004").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", str(tmp_path / "worker.py")])
    step = int(list_checkpoints(run)[-1].name.split("-")[1])
    assert step >= 4
    resumed = launch(tmp_path, run, step + 2, "resume")
    assert resumed[0]["step"] == step + 2 and len(resumed[0]["losses"]) == step + 2
    one = span_trainer(tokenizer, tmp_path / "single", batch_size=2, grad_accum=2, steps=step + 2, save_every=0)
    one.train()
    np.testing.assert_allclose(resumed[0]["losses"], one.losses, rtol=2e-5)
