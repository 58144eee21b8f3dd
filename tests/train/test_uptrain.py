"""The uptrain CLI end to end: span corruption and supervised runs, resume, export, and one-line errors."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import mlx_mqa
from mlx_mqa.train.checkpoints import OPT_DIR, STATE_FILE, list_checkpoints
from mlx_mqa.uptrain import main

from .conftest import write_corpus


def span_args(model, run, corpus, *extra):
    """The uptrain options of a span-corruption run of `model` on `corpus`: 32-token inputs, batches of 4."""
    args = ["--model", str(model), "--run-dir", str(run), "--data", str(corpus), "--input-length", "32"]
    return [*args, "--batch-size", "4", *map(str, extra)]


def one_line_error(r, exit_code, pattern):
    """The run failed with `exit_code` and said why in one `error: ...` line, without a traceback."""
    import re

    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert r.exit_code == exit_code and len(errors) == 1 and "Traceback" not in r.output, r.output
    assert re.search(pattern, errors[0]), errors[0]


def test_cli_span_uptraining_resume_and_load(converted, corpus, tmp_path):
    run = tmp_path / "run"
    base = span_args(
        converted,
        run,
        corpus,
        "--eval-fraction",
        "0.2",
        "--eval-every",
        "2",
        "--save-every",
        "2",
        "--lr",
        "1e-2",
        "--warmup",
        "2",
        "--pretrain-steps",
        "80",
    )
    r = CliRunner().invoke(main, base + ["--alpha", "0.05"])  # 4 steps
    assert r.exit_code == 0, r.output
    assert "held-out loss" in r.output and "tokens/s" in r.output
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-0000002", "ckpt-0000004"]
    r = CliRunner().invoke(main, base + ["--alpha", "0.1"])  # existing run, no --resume
    assert r.exit_code != 0 and "--resume" in r.output
    r = CliRunner().invoke(main, base + ["--alpha", "0.1", "--resume", "--output", str(tmp_path / "final")])
    assert r.exit_code == 0, r.output
    assert "resumed from" in r.output and "ckpt-0000008" in r.output
    model, tok = mlx_mqa.load(tmp_path / "final")
    assert model.args.num_key_value_heads == 2
    assert model.args.conversion["pool"] == "mean" and model.args.conversion["kv_heads"] == 2
    assert json.loads((tmp_path / "final" / "config.json").read_text())["training"]["step"] == 8
    assert not (tmp_path / "final" / STATE_FILE).exists() and not (tmp_path / "final" / OPT_DIR).exists()
    assert isinstance(mlx_mqa.generate(model, tok, ["the cat"], max_new_tokens=3)[0], str)
    r = CliRunner().invoke(main, base + ["--alpha", "0.1", "--resume", "--batch-size", "2"])
    assert r.exit_code == 3 and "other settings" in r.output


def test_cli_supervised_from_a_directory(converted, tmp_path):
    (tmp_path / "pairs").mkdir()
    write_corpus(tmp_path / "pairs" / "a.jsonl", n=20, fields=("article", "highlights"))
    write_corpus(tmp_path / "pairs" / "b.jsonl", n=20, fields=("article", "highlights"), seed=1)
    r = CliRunner().invoke(
        main,
        [
            "--model",
            str(converted),
            "--run-dir",
            str(tmp_path / "sup"),
            "--data",
            str(tmp_path / "pairs"),
            "--source-field",
            "article",
            "--target-field",
            "highlights",
            "--eval-fraction",
            "0.1",
            "--objective",
            "supervised",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--optimizer",
            "adamw",
            "--lr",
            "1e-3",
            "--max-source-length",
            "64",
            "--max-target-length",
            "16",
            "--schedule",
            "cosine",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "held-out loss" in r.output and "36 training pairs, 4 held out" in r.output


def test_cli_sigint_checkpoints_and_resumes(converted, corpus, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mlx_mqa.uptrain",
        *span_args(converted, run, corpus, "--steps", 100000, "--save-every", 0),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "log.jsonl").exists() and (run / "log.jsonl").stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 1, out
    state = json.loads((ckpts[0] / "trainer_state.json").read_text())
    assert state["step"] == int(ckpts[0].name.split("-")[1]) and len(state["losses"]) == state["step"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no half-written checkpoint


@pytest.mark.parametrize(
    "args,code,pattern",
    [
        (["--steps", "0"], 2, r"^error: --steps must be at least 1, not 0$"),
        (["--alpha", "0.05"], 2, r"--alpha needs --pretrain-steps"),
        (["--steps", "2", "--alpha", "0.05"], 2, r"not both"),
    ],
)
def test_cli_bad_step_counts_are_one_line_errors(converted, corpus, tmp_path, args, code, pattern):
    r = CliRunner().invoke(main, span_args(converted, tmp_path / "run", corpus, *args))
    one_line_error(r, code, pattern)
    assert not (tmp_path / "run").exists()


def test_cli_names_a_missing_text_field(converted, tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", fields=("text", "headline"))
    r = CliRunner().invoke(main, span_args(converted, tmp_path / "run", corpus, "--steps", "2"))
    one_line_error(r, 4, r"no record has the text field 'document'; fields found: 'headline', 'id', 'text'")
    r = CliRunner().invoke(main, span_args(converted, tmp_path / "run", corpus, "--steps", "2", "--text-field", "text"))
    assert r.exit_code == 0, r.output


def test_cli_supervised_data_errors(converted, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pairs here\n")
    base = ["--model", str(converted), "--run-dir", str(tmp_path / "run"), "--objective", "supervised", "--steps", "2"]
    r = CliRunner().invoke(main, base + ["--data", str(tmp_path / "empty")])
    one_line_error(r, 4, r"no data files at .*empty.*\.jsonl")
    corpus = write_corpus(tmp_path / "c.jsonl", fields=("document", "abstract"))
    r = CliRunner().invoke(main, base + ["--data", str(corpus)])
    one_line_error(r, 4, r"c.jsonl:1 lacks the field 'summary'; fields found: 'abstract', 'document', 'id'")


def test_cli_refuses_a_quantized_model(tokenizer, corpus, tmp_path):
    from mlx_mqa.checkpoint.random_init import save_random_checkpoint
    from mlx_mqa.conversion import convert

    from .tiny import TINY

    hf = save_random_checkpoint({**TINY, "model_type": "t5"}, tmp_path / "hf", tokenizer=tokenizer)
    q = convert(str(hf), str(tmp_path / "q"), kv_heads=2, dtype="float32", quantize=True, q_group_size=32)
    r = CliRunner().invoke(main, span_args(q, tmp_path / "run", corpus, "--steps", "2"))
    one_line_error(r, 2, r"quantized.*convert without -q for uptraining, quantize afterwards")
    assert not list_checkpoints(tmp_path / "run") and "data:" not in r.output  # refused before any work


def test_cli_resume_with_more_steps_keeps_or_refuses_the_schedule(converted, corpus, tmp_path):
    def lrs(run):
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return [r["lr"] for r in log if r["event"] == "step"]

    def uptrain(run, *extra):
        return CliRunner().invoke(
            main, span_args(converted, run, corpus, "--schedule", "cosine", "--lr", "1e-2", "--save-every", "2", *extra)
        )

    a = tmp_path / "a"
    assert uptrain(a, "--steps", "2").exit_code == 0
    one_line_error(
        uptrain(a, "--steps", "4", "--resume"),
        3,
        r"decaying over 2 steps, this run's decays over 4 .*--schedule-steps 2",
    )
    # Planned with --schedule-steps 4 from the start: extending to 4 steps keeps the schedule of a straight run.
    b, c = tmp_path / "b", tmp_path / "c"
    assert uptrain(b, "--steps", "2", "--schedule-steps", "4").exit_code == 0
    r = uptrain(b, "--steps", "4", "--schedule-steps", "4", "--resume")
    assert r.exit_code == 0, r.output
    assert uptrain(c, "--steps", "4").exit_code == 0
    assert lrs(b) == lrs(c) and len(lrs(c)) == 4
    one_line_error(uptrain(c, "--steps", "2", "--schedule-steps", "4", "--resume"), 2, r"step 4, past --steps 2")


def test_cli_streamed_corpus_trains_and_resumes_exactly(converted, corpus, tmp_path):
    def losses(run):
        return json.loads((list_checkpoints(run)[-1] / STATE_FILE).read_text())["losses"]

    def uptrain(run, *extra):
        r = CliRunner().invoke(main, span_args(converted, run, corpus, "--stream", "--eval-examples", "4", *extra))
        assert r.exit_code == 0, r.output
        return r

    r = uptrain(tmp_path / "whole", "--steps", "4")
    assert "4 held out from the first" in r.output and "held-out loss" in r.output
    uptrain(tmp_path / "cut", "--steps", "2")
    uptrain(tmp_path / "cut", "--steps", "4", "--resume")
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole") and len(losses(tmp_path / "whole")) == 4
    args = span_args(converted, tmp_path / "s", corpus, "--stream", "--objective", "supervised", "--steps", "2")
    r = CliRunner().invoke(main, args)
    one_line_error(r, 2, r"--stream reads span-corruption corpora")
    r = CliRunner().invoke(main, span_args(converted, tmp_path / "t", corpus, "--stream", "--steps", "2"))
    one_line_error(r, 4, r"held-out windows take all 40 documents of the corpus: lower --eval-examples")


@pytest.mark.parametrize("which", ["folder", "run-dir", "model", "ancestor"])
def test_cli_output_never_deletes_what_exists_without_overwrite_nor_a_source(converted, corpus, tmp_path, which):
    folder, run = tmp_path / "notes", tmp_path / "run"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    before = sorted(p.name for p in converted.iterdir())
    target = {"folder": folder, "run-dir": run, "model": converted, "ancestor": tmp_path}[which]
    if which == "run-dir":  # a run with checkpoints, continued with --output pointing at it
        assert CliRunner().invoke(main, span_args(converted, run, corpus, "--steps", "2")).exit_code == 0
    extra = ["--resume"] if which == "run-dir" else ["--overwrite"] if which != "folder" else []
    r = CliRunner().invoke(main, span_args(converted, run, corpus, "--steps", "4", "--output", target, *extra))
    if which == "folder":
        one_line_error(r, 3, r"notes already exists; choose another --output or pass --overwrite")
    else:
        one_line_error(r, 2, r"^error: --output .* would replace .*, which this run reads; choose another --output")
    assert "data:" not in r.output  # refused before any work
    assert (folder / "keep.txt").read_text() == "mine" and sorted(p.name for p in converted.iterdir()) == before
    assert [p.name for p in list_checkpoints(run)] == (["ckpt-0000002"] if which == "run-dir" else [])
    if which == "folder":  # --overwrite replaces it with the model
        args = span_args(converted, run, corpus, "--steps", "2", "--output", folder, "--overwrite")
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0 and not (folder / "keep.txt").exists() and (folder / "config.json").exists()


def test_cli_overwrite_never_deletes_a_checkpoint_the_run_starts_from(converted, corpus, tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, span_args(converted, run, corpus, "--steps", "2")).exit_code == 0
    ckpt = list_checkpoints(run)[-1]
    r = CliRunner().invoke(main, span_args(ckpt, run, corpus, "--steps", "2", "--overwrite"))
    one_line_error(r, 2, r"--overwrite would delete .*ckpt-0000002, which this run reads")
    assert list_checkpoints(run) == [ckpt]
    r = CliRunner().invoke(main, span_args(converted, run, corpus, "--steps", "4", "--resume", "--overwrite"))
    one_line_error(r, 2, r"give --resume .* or --overwrite .*, not both")


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--input-length", "-4"], r"--input-length must be at least 10, not -4"),
        (["--clip-grad-norm", "-1"], r"--clip-grad-norm must be > 0, not -1.0"),
        (["--lr", "-1"], r"--lr must be > 0, not -1.0"),
        (["--lr", "nan"], r"--lr must be > 0, not nan"),
        (["--save-every", "-1"], r"--save-every must be >= 0, not -1"),
        (["--warmup", "-3"], r"--warmup must be >= 0, not -3"),
        (["--eval-every", "-2"], r"--eval-every must be >= 0"),
        (["--keep", "0"], r"--keep must be >= 1, not 0"),
        (["--weight-decay", "-0.1"], r"--weight-decay must be >= 0"),
        (["--min-lr-ratio", "2"], r"--min-lr-ratio must be in \[0, 1\], not 2.0"),
        (["--eval-fraction", "1.5"], r"--eval-fraction must be in \[0, 1\), not 1.5"),
        (["--eval-examples", "0"], r"--eval-examples must be at least 1"),
        (["--max-source-length", "0"], r"--max-source-length must be at least 1"),
    ],
)
def test_cli_bad_option_values_are_refused_before_any_work(converted, corpus, tmp_path, args, pattern):
    r = CliRunner().invoke(main, span_args(converted, tmp_path / "run", corpus, "--steps", "2", *args))
    one_line_error(r, 2, pattern)
    assert not (tmp_path / "run").exists() and "loading" not in r.output


def test_cli_unwritable_places_are_refused_before_training(converted, corpus, tmp_path):
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, span_args(converted, tmp_path / "file" / "run", corpus, "--steps", "2"))
    one_line_error(r, 2, r"cannot write --run-dir .*file/run: .*file is a file; choose another --run-dir")
    out = tmp_path / "file" / "final"
    r = CliRunner().invoke(main, span_args(converted, tmp_path / "run", corpus, "--steps", "2", "--output", out))
    one_line_error(r, 2, r"cannot write --output .*: .*file is a file; choose another --output")
    assert not (tmp_path / "run").exists() and "disk space" not in r.output


def test_cli_refuses_a_model_without_a_tokenizer(converted, corpus, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(converted, bare)
    for f in bare.glob("*token*"):
        f.unlink()
    (bare / "spiece.model").unlink(missing_ok=True)
    r = CliRunner().invoke(main, span_args(bare, tmp_path / "run", corpus, "--steps", "2"))
    one_line_error(r, 3, r"bare has no tokenizer \(tokenizer.json or spiece.model\)")
    assert not list_checkpoints(tmp_path / "run")


def test_cli_checkpoints_and_output_follow_the_umask(converted, corpus, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        args = span_args(converted, tmp_path / "run", corpus, "--steps", "1", "--output", tmp_path / "out")
        r = CliRunner().invoke(main, args)
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    for d in (list_checkpoints(tmp_path / "run")[-1], tmp_path / "out"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in d.iterdir() if p.is_file()} == {0o644}


def test_cli_resumes_after_a_sigkill(converted, corpus, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    args = span_args(converted, run, corpus, "--steps", 100000, "--save-every", 1, "--keep", 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_mqa.uptrain", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(list_checkpoints(run)) < 1:
        time.sleep(0.1)
    time.sleep(0.3)  # likely inside a save
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    step = int(list_checkpoints(run)[-1].name.split("-")[1])
    r = CliRunner().invoke(main, span_args(converted, run, corpus, "--steps", step + 2, "--save-every", 1, "--resume"))
    assert r.exit_code == 0 and f"step {step}" in r.output, r.output
    assert list_checkpoints(run)[-1].name == f"ckpt-{step + 2:07d}"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # the killed save's partial dir is gone
