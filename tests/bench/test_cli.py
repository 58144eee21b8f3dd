"""The bench CLI end to end on a tiny random model and 3 bundled examples; the results schema (JSON and CSV)."""

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_mqa.bench.cli import main as bench_main
from mlx_mqa.bench.results import QUALITY_COLUMNS, SPEED_COLUMNS, validate_results, weights_provenance
from mlx_mqa.bench.rouge import METRICS

from .tiny import TINY, run_speed_only


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, hf_checkpoint):
    root = tmp_path_factory.mktemp("bench_cli")
    model = hf_checkpoint("t5-small", shared_std=0.05, seed=2, **TINY)
    return root, model


@pytest.fixture(scope="module")
def run_cli(tiny_model):
    root, model = tiny_model
    out = root / "out"
    args = [
        "--model",
        str(model),
        "--kv-heads",
        "H,2,1",
        "--batch-sizes",
        "1,2",
        "--lengths",
        "32x4",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--dataset",
        "bundled:cnn_dailymail",
        "--limit",
        "3",
        "--quality-lengths",
        "96x12",
        "--quality-batch-size",
        "2",
        "--bootstrap",
        "200",
        "--out",
        str(out),
        "--cache-dir",
        str(root / "cache"),
        "--no-progress",
    ]
    result = CliRunner().invoke(bench_main, args)
    return result, out


def test_cli_end_to_end(run_cli):
    result, out = run_cli
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = result.output
    for needle in (
        "Speed (medians",
        "Memory-traffic model",
        "MLX vs PyTorch, multi-head",
        "Quality (ROUGE F1 %",
        "MEANINGLESS",
        "To benchmark a real checkpoint",
        "GQA-2",
        "MQA",
        "torch MHA",
    ):
        assert needle in text, needle
    assert "tokens identical on 3/3 examples; ROUGE equal" in text
    for name in ("results.json", "speed.csv", "quality.csv", "time_vs_groups.png", "rouge_vs_time.png"):
        assert (out / name).exists(), name
    assert (out / "time_vs_groups.png").read_bytes()[:4] == b"\x89PNG"
    res = json.loads((out / "results.json").read_text())
    assert validate_results(res) == []
    # 3 MLX variants + the PyTorch MHA, at 2 batch sizes; the converted models' K/V bytes match the formula.
    assert len(res["speed"]) == 8
    assert all(r["kv_cache_bytes"] == r["kv_cache_bytes_formula"] for r in res["speed"])
    assert {r["kv_heads"] for r in res["speed"] if r["backend"] == "mlx"} == {4, 2, 1}
    assert all(r["repeats"] == 2 for r in res["speed"])
    kv = {r["kv_heads"]: r["kv_cache_bytes"] for r in res["speed"] if r["backend"] == "mlx" and r["batch_size"] == 2}
    assert kv[4] == 2 * kv[2] == 4 * kv[1]
    assert [r["batch_size"] for r in res["mlx_vs_torch"]] == [1, 2]
    # Quality: 3 MLX variants + 3 PyTorch references, each on the same 3 examples.
    q = {(r["backend"], r["variant"]): r for r in res["quality"]}
    assert set(q) == {(b, v) for b in ("mlx", "torch") for v in ("MHA", "GQA-2", "MQA")}
    assert all(r["n"] == 3 and r["input_len"] == 96 and r["output_len"] == 12 for r in q.values())
    for v in ("MHA", "GQA-2", "MQA"):
        assert q[("mlx", v)]["tokens_match_reference"]["all_identical"], v
        assert q[("mlx", v)]["reference_variant"] == f"torch {v}"
    for m in METRICS:
        assert q[("mlx", "MHA")]["rouge"][m] == q[("torch", "MHA")]["rouge"][m]
    assert res["model"]["provenance"]["kind"] == "random"
    assert res["model"]["provenance"]["random_weights_seed"] == 2
    assert any("ROUGE is meaningless" in n for n in res["notes"])


def test_predictions_saved_per_example(run_cli):
    _, out = run_cli
    res = json.loads((out / "results.json").read_text())
    files = res["files"]["predictions"]
    assert len(files) == 6
    mlx = [json.loads(line) for line in (out / files["mlx:MHA:bundled:cnn_dailymail"]).read_text().splitlines()]
    ref = [json.loads(line) for line in (out / files["torch:MHA:bundled:cnn_dailymail"]).read_text().splitlines()]
    assert [p["id"] for p in mlx] == [
        "cnn_dailymail-test-helm0000",
        "cnn_dailymail-test-helm0001",
        "cnn_dailymail-test-helm0002",
    ]
    assert all(set(p) >= {"id", "prediction", "reference", "tokens", "rouge1", "rougeLsum"} for p in mlx)
    assert all(p["rouge_meaningful"] is False for p in mlx + ref)
    assert all(q["rouge_meaningful"] is False for q in res["quality"])
    assert [p["tokens"] for p in mlx] == [p["tokens"] for p in ref]
    assert all(1 <= len(p["tokens"]) <= 12 for p in mlx)


def test_results_schema_json_and_csv(run_cli):
    _, out = run_cli
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is True
    env = res["environment"]
    assert env["packages"]["mlx"] and env["packages"]["torch"] and env["packages"]["transformers"]
    assert env["packages"]["numpy"] and env["dtype"] == "float32" and env["torch_device"] == "cpu"
    assert "commit" in env["git"] and "blas" in env and env["cpu"]
    with open(out / "speed.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == SPEED_COLUMNS and len(rows) == len(res["speed"])
    assert all(
        float(r["time_per_sample_s_min"]) <= float(r["time_per_sample_s"]) <= float(r["time_per_sample_s_max"])
        for r in rows
    )
    assert {r["weights"] for r in rows} == {"random(seed=2)"}
    assert {r["mlx_version"] for r in rows} == {env["packages"]["mlx"]}
    with open(out / "quality.csv") as f:
        qrows = list(csv.DictReader(f))
    assert list(qrows[0]) == QUALITY_COLUMNS and len(qrows) == 6
    assert {r["rouge_meaningful"] for r in qrows} == {"False"}
    assert {r["tokens_identical"] for r in qrows if r["backend"] == "mlx"} == {"3"}


# The columns of speed.csv and quality.csv before conversion methods were compared: they keep their order.
SPEED_COLUMNS_BEFORE = """variant backend kv_heads num_heads quantize_bits decode_path device batch_size input_len
output_len repeats encoder_s encoder_s_min encoder_s_max decode_step_s decode_step_s_min decode_step_s_max
time_per_sample_s time_per_sample_s_min time_per_sample_s_max tokens_per_s tokens_per_s_min tokens_per_s_max
peak_memory_bytes peak_memory_process_bytes memory_method kv_cache_bytes kv_self_bytes kv_cross_bytes
kv_cache_bytes_formula weight_bytes traffic_weights_bytes traffic_kv_bytes traffic_bytes_per_step
predicted_decode_speedup measured_decode_speedup measured_sample_speedup baseline""".split()
QUALITY_COLUMNS_BEFORE = """variant backend kv_heads num_heads quantize_bits dataset n input_len output_len num_beams
batch_size rouge1 rouge1_low rouge1_high rouge2 rouge2_low rouge2_high rougeL rougeL_low rougeL_high rougeLsum
rougeLsum_low rougeLsum_high mean_rouge time_per_sample_s generated_tokens_mean reference_variant
tokens_identical tokens_total rouge_meaningful sentence_splitter""".split()
ENV_COLUMNS_BEFORE = """weights dtype git_commit mlx_version torch_version transformers_version mlx_device
torch_device cpu blas""".split()


def test_default_run_keeps_names_paths_and_columns(run_cli):
    """Without --pool: the names, cache paths and columns of before, the method and step columns appended."""
    result, out = run_cli
    res = json.loads((out / "results.json").read_text())
    assert [(v["name"], v["pool"], v["grouping"], v["timed"]) for v in res["variants"]] == [
        (n, "mean", "contiguous", True) for n in ("MHA", "GQA-2", "MQA")
    ]
    assert [Path(v["path"]).name for v in res["variants"]] == ["kv4-float32-v1", "kv2-float32-v1", "kv1-float32-v1"]
    assert [r["variant"] for r in res["speed"][:4]] == ["MHA", "GQA-2", "MQA", "torch MHA"]
    assert res["speed_note"] is None and "Speed is timed for" not in result.output
    assert "tokens = torch:" not in result.output
    with open(out / "speed.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == SPEED_COLUMNS_BEFORE + ENV_COLUMNS_BEFORE + ["pool", "grouping", "decode_step"]
    assert [r["decode_step"] for r in rows[:4]] == ["compiled"] * 3 + [""]  # small K/V: the compiled step
    with open(out / "quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == QUALITY_COLUMNS_BEFORE + ENV_COLUMNS_BEFORE + ["pool", "grouping"]
    assert {(r["pool"], r["grouping"]) for r in rows} == {("mean", "contiguous")}


def test_schema_check_catches_problems(run_cli):
    _, out = run_cli
    good = json.loads((out / "results.json").read_text())
    bad = copy.deepcopy(good)
    del bad["environment"]["git"]
    bad["speed"][0]["decode_step_s"]["min"] = 10.0
    bad["quality"][0]["rouge"]["rouge2"]["low"] = 101.0
    problems = validate_results(bad)
    assert len(problems) == 3, problems
    assert validate_results({"schema": "x"})[0].startswith("missing top-level key")
    bad = copy.deepcopy(good)
    bad["model"]["provenance"] = {"kind": "random"}
    assert validate_results(bad) == ["random weights without random_weights_seed"]


def test_weights_provenance(tmp_path, run_cli):
    _, out = run_cli
    res = json.loads((out / "results.json").read_text())
    converted = Path(res["variants"][1]["path"])
    prov = weights_provenance(converted)
    assert prov == {"kind": "random", "random_weights_seed": 2, "source": res["model"]["path"]}
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 8, "num_heads": 2}))
    assert weights_provenance(tmp_path)["kind"] == "checkpoint"


def test_cli_offline_dataset_error_names_data_and_fails_fast(tmp_path, monkeypatch):
    import datasets

    from mlx_mqa.bench import data

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: True)
    cache = tmp_path / "cache"
    for name, needle in (("cnn_dailymail", "cannot read dataset 'cnn_dailymail'"), ("nosuch", "unknown dataset")):
        r = CliRunner().invoke(
            bench_main, ["--dataset", name, "--cache-dir", str(cache), "--out", str(tmp_path / "o"), "--no-progress"]
        )
        assert r.exit_code == 4, r.output
        assert needle in r.output and "--data FILE.jsonl" in r.output
        assert "Traceback" not in r.output
    assert not cache.exists()  # failed before building or converting any model


def test_cli_help_and_bad_options():
    r = CliRunner().invoke(bench_main, ["--help"])
    assert r.exit_code == 0
    for needle in ("--kv-heads", "--preset", "--quantize", "--num-beams", "--data", "--torch-device", "random:"):
        assert needle in r.output
    r = CliRunner().invoke(bench_main, ["--lengths", "512", "--no-progress"])
    assert r.exit_code != 0 and "INPUTxOUTPUT" in r.output


def test_cli_quantized_variants_without_torch(tiny_model, tmp_path):
    root, model = tiny_model
    r = run_speed_only(model, tmp_path, root / "cache", "2", "--quantize", "8", "--no-plots")
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((tmp_path / "results.json").read_text())
    assert [(v["name"], v["quantize_bits"]) for v in res["variants"]] == [
        ("MHA", None),
        ("MQA", None),
        ("MHA-q8", 8),
        ("MQA-q8", 8),
    ]
    w = {v["name"]: v["weight_bytes"] for v in res["variants"]}
    assert w["MHA-q8"] < 0.5 * w["MHA"] and w["MQA-q8"] < w["MHA-q8"]
    assert all(v["weights"]["kind"] == "random" for v in res["variants"])
    speed = {r["variant"]: r for r in res["speed"]}
    assert set(speed) == {"MHA", "MQA", "MHA-q8", "MQA-q8"} and res["mlx_vs_torch"] == []
    assert speed["MQA-q8"]["baseline"] == "MHA-q8" and speed["MQA"]["baseline"] == "MHA"
    assert speed["MHA-q8"]["traffic_bytes_per_step"]["weights"] < speed["MHA"]["traffic_bytes_per_step"]["weights"]
    assert "torch" not in r.output.split("Speed")[1].split("Memory-traffic")[0]


def test_interrupted_sweep_keeps_finished_settings(tiny_model, tmp_path, monkeypatch):
    """Ctrl-C in the second setting: the first one's figures are on disk, marked incomplete."""
    from mlx_mqa.bench import speed

    root, model = tiny_model
    real_run, calls = speed.mlx_run, []

    def run_then_interrupt(model, ids, *a, **k):
        calls.append(ids.shape[0])
        if ids.shape[0] == 2:
            raise KeyboardInterrupt
        return real_run(model, ids, *a, **k)

    monkeypatch.setattr(speed, "mlx_run", run_then_interrupt)
    r = run_speed_only(model, tmp_path, root / "cache", "1,2", "--no-plots")
    assert r.exit_code == 130 and "complete" in r.output, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["complete"] is False
    assert [(s["variant"], s["batch_size"]) for s in res["speed"]] == [("MHA", 1), ("MQA", 1)]
    assert res["speed"][1]["measured_decode_speedup"] > 0
    rows = list(csv.DictReader(open(tmp_path / "speed.csv")))
    assert [row["variant"] for row in rows] == ["MHA", "MQA"]


def test_module_and_script_entry_points():
    root = Path(__file__).resolve().parents[2]
    for cmd, usage in (
        ([sys.executable, "-m", "mlx_mqa.bench", "--help"], "Usage: python -m mlx_mqa.bench"),
        ([sys.executable, "bench.py", "--help"], "Usage: bench.py"),
    ):
        r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(usage) and "--kv-heads" in r.stdout and "--no-torch" in r.stdout


def test_a_data_file_is_generated_at_the_lengths_help_gives(tmp_path):
    """--data FILE.jsonl ran at the quick preset's 512x32 while --help said 512x128: both now read one default."""
    from mlx_mqa.bench.cli import build_config
    from mlx_mqa.bench.config import DEFAULT_QUALITY_LENGTHS
    from mlx_mqa.bench.run import quality_jobs

    data = tmp_path / "a.jsonl"
    data.write_text(json.dumps({"id": "a", "document": "Some text.", "summary": "Text."}) + "\n")
    ctx = bench_main.make_context("bench.py", ["--data", str(data)])
    jobs = quality_jobs(build_config(ctx, ctx.params))
    assert [(j.label, j.input_len, j.output_len) for j in jobs] == [("file:a.jsonl", *DEFAULT_QUALITY_LENGTHS)]
    text = " ".join(CliRunner().invoke(bench_main, ["--help"]).output.split())
    assert "{}x{} for --data files".format(*DEFAULT_QUALITY_LENGTHS) in text
    ctx = bench_main.make_context("bench.py", [])  # the bundled demo keeps its short generation
    assert build_config(ctx, ctx.params).quality_lengths == (512, 32) and "bundled demo" in text


def test_no_speed_writes_no_speed_files(tiny_model, tmp_path):
    root, model = tiny_model
    r = run_speed_only(model, tmp_path, root / "cache", "1", "--no-speed")
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["speed"] == [] and "speed_csv" not in res["files"] and validate_results(res) == []
    assert not (tmp_path / "speed.csv").exists() and not (tmp_path / "time_vs_groups.png").exists()
    assert "speed.csv" not in r.output and "Speed (medians" not in r.output


def test_no_quality_writes_no_quality_files(tiny_model, tmp_path):
    root, model = tiny_model
    r = run_speed_only(model, tmp_path, root / "cache", "1")
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["quality"] == [] and validate_results(res) == []
    assert "quality_csv" not in res["files"] and "predictions" not in res["files"]
    assert not (tmp_path / "quality.csv").exists() and not (tmp_path / "predictions").exists()
    assert not (tmp_path / "rouge_vs_time.png").exists() and "quality.csv" not in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "-1"], "error: --layers must be at least 1, got -1"),
        (["--repeats", "0"], "error: --repeats must be at least 1, got 0"),
        (["--limit", "0"], "error: --limit must be at least 1, got 0"),
        (["--quantize", "7"], "error: --quantize: bit widths must be among 2, 3, 4, 5, 6, 8"),
        (["--out", "{file}/sub"], "error: --out {file}/sub cannot be created: {file} is a file"),
        (["--out", "{file}"], "error: --out {file} is a file"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, args, message):
    """Every option is checked before the model is built: one line naming the option, ConfigError's exit code."""
    from mlx_mqa.errors import ConfigError

    file = tmp_path / "file.txt"
    file.write_text("")
    cache = tmp_path / "cache"
    args = [a.format(file=file) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "o")]
    r = CliRunner().invoke(bench_main, [*args, *out, "--cache-dir", str(cache), "--no-progress"])
    assert r.exit_code == ConfigError.exit_code, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(file=file)), r.output
    assert not cache.exists() and not (tmp_path / "o").exists()
