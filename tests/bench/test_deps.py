"""Optional dependencies are checked before any work: a one-line error naming the extra, or a note for figures."""

import json
import sys

import pytest
from click.testing import CliRunner

from mlx_mqa.bench import config
from mlx_mqa.bench.cli import main as bench_main
from mlx_mqa.bench.config import BenchConfig, MissingDependency, check_dependencies, has_module, plots_available

from .tiny import run_speed_only


def without(monkeypatch, *modules):
    """Simulate uninstalled packages: a None entry in sys.modules makes both import and find_spec fail."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_has_module(monkeypatch):
    assert has_module("json") and has_module("rouge_score") and not has_module("no_such_module_xyz")
    without(monkeypatch, "rouge_score")
    assert not has_module("rouge_score")
    with pytest.raises(ImportError):
        import rouge_score  # noqa: F401


@pytest.mark.parametrize(
    "module,needle",
    [
        ("torch", "the PyTorch reference needs torch (pip install 'mlx-mqa[torch]'); or pass --no-torch"),
        (
            "rouge_score",
            "the quality runs (ROUGE) needs rouge-score and nltk (pip install 'mlx-mqa[bench]'); or pass --no-quality",
        ),
        ("nltk", "pip install 'mlx-mqa[bench]'"),
    ],
)
def test_missing_required_package_is_an_error(monkeypatch, module, needle):
    without(monkeypatch, module)
    with pytest.raises(MissingDependency) as e:
        check_dependencies(BenchConfig())
    assert needle in str(e.value) and e.value.exit_code == 2


def test_parts_not_run_need_nothing(monkeypatch):
    without(monkeypatch, "torch", "rouge_score", "nltk", "datasets", "matplotlib")
    assert check_dependencies(BenchConfig(torch=False, quality=False, plots=False)) == []
    # No dataset and no file: no quality run, so no ROUGE either.
    assert check_dependencies(BenchConfig(torch=False, datasets=(), plots=False)) == []


def test_datasets_only_for_hub_datasets(monkeypatch):
    without(monkeypatch, "datasets")
    assert check_dependencies(BenchConfig(torch=False, datasets=("bundled:cnn_dailymail",), plots=False)) == []
    assert check_dependencies(BenchConfig(torch=False, datasets=(), data_files=("x.jsonl",), plots=False)) == []
    # An unknown name is the data loader's error (it lists the known ones), not a missing package.
    assert check_dependencies(BenchConfig(torch=False, datasets=("nosuch",), plots=False)) == []
    with pytest.raises(
        MissingDependency,
        match=r"dataset arxiv, pubmed from the Hugging Face hub needs datasets "
        r"\(pip install 'mlx-mqa\[bench\]'\); or pass --data FILE.jsonl",
    ):
        check_dependencies(BenchConfig(torch=False, datasets=("bundled:xsum", "arxiv", "pubmed")))
    assert config.hub_datasets_requested(["bundled:arxiv", "arxiv", "nosuch", "xsum"]) == ["arxiv", "xsum"]


def test_missing_matplotlib_skips_figures_with_a_note(monkeypatch):
    cfg = BenchConfig(torch=False)
    assert check_dependencies(cfg) == [] and plots_available(cfg)
    without(monkeypatch, "matplotlib")
    notes = check_dependencies(cfg)
    assert len(notes) == 1 and "matplotlib is not installed: no figures" in notes[0] and "mlx-mqa[bench]" in notes[0]
    assert not plots_available(cfg)
    assert check_dependencies(BenchConfig(torch=False, plots=False)) == []


def test_cli_missing_torch_fails_before_any_work(monkeypatch, tmp_path):
    without(monkeypatch, "torch")
    cache = tmp_path / "cache"
    r = CliRunner().invoke(bench_main, ["--cache-dir", str(cache), "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        "error: the PyTorch reference needs torch (pip install 'mlx-mqa[torch]'); or pass --no-torch"
    ]
    assert not cache.exists() and not (tmp_path / "o").exists()  # nothing built, converted or written


def test_cli_missing_rouge_score_fails_before_any_work(monkeypatch, tmp_path):
    without(monkeypatch, "rouge_score")
    cache = tmp_path / "cache"
    r = CliRunner().invoke(bench_main, ["--no-torch", "--cache-dir", str(cache), "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: the quality runs (ROUGE) needs rouge-score and nltk" in r.output and "--no-quality" in r.output
    assert not cache.exists()


def test_cli_without_matplotlib_writes_everything_but_figures(monkeypatch, tmp_path, tiny):
    source, _ = tiny
    without(monkeypatch, "matplotlib")
    out = tmp_path / "out"
    r = run_speed_only(source.path, out, tmp_path / "cache")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "[bench] note: matplotlib is not installed: no figures this run" in r.output
    assert (out / "results.json").exists() and (out / "speed.csv").exists()
    assert not list(out.glob("*.png"))
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is True and len(res["speed"]) == 2
    assert any(n.startswith("matplotlib is not installed") for n in res["notes"])
    assert not any(k.startswith("plot_") for k in res["files"])
    assert res["speed"][1]["measured_decode_speedup"] > 0
