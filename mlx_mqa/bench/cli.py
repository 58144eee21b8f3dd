#!/usr/bin/env python
"""Speed, memory and ROUGE of MHA vs GQA vs MQA T5 in MLX, side by side with the PyTorch reference."""

import sys
import time
from pathlib import Path

import click

import mlx_mqa  # noqa: F401  (loads the optimized BLAS before anything imports mlx.core)
from mlx_mqa.errors import MlxMqaError

PRESETS = {
    # The offline default: a small random T5, a few bundled real examples, a couple of minutes on 2 CPU cores.
    "quick": dict(batch_sizes="1,4", lengths="256x32", datasets="bundled:cnn_dailymail", limit=6,
                  quality_lengths="512x32"),
    # Ainslie et al. 2023: CNN/DailyMail 512 -> 256; arXiv and PubMed 2048 -> 512; greedy decoding.
    "paper": dict(batch_sizes="1", lengths="512x256,2048x512", datasets="cnn_dailymail,arxiv,pubmed", limit=None,
                  quality_lengths=None),
}


def _fail(e):
    click.echo(f"error: {e}", err=True)
    raise SystemExit(getattr(e, "exit_code", 2))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--model", default="random:t5-small", show_default=True,
              help="Multi-head T5 checkpoint: hub id (google/t5-base), local Hugging Face directory, or "
                   "random:<shape> for deterministic random weights of a real shape "
                   "(t5-small, t5-base, t5-large, flan-t5-*, t5-v1_1-large, t5-large-lm-adapt).")
@click.option("--layers", type=int, default=None,
              help="random:<shape> only: encoder and decoder layers (default: the shape's; 2 for the offline demo run without --model).")
@click.option("--kv-heads", default=None,
              help="Comma list of K/V head counts G to convert to (H or mha = multi-head, 1 or mqa = multi-query), "
                   "e.g. H,4,1 or 16,8,4,1. Default: H, the divisor nearest H/3, 1.")
@click.option("--quantize", default="", help="Also benchmark quantized MLX copies of every --kv-heads variant at "
              "these bit widths, e.g. 8,4.")
@click.option("--q-group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Quantization group size.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Weights and activations, MLX and PyTorch alike. Default: float32 on CPU, bfloat16 on a GPU.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="quick", show_default=True,
              help="quick: speed at 256->32, batch 1 and 4, and 6 bundled CNN/DailyMail examples at 512->32. paper: speed "
                   "at 512->256 and 2048->512, "
                   "quality on cnn_dailymail (512->256), arxiv and pubmed (2048->512) from the hub, greedy. "
                   "Options given explicitly override the preset.")
@click.option("--batch-sizes", default=None, help="Comma list of batch sizes for the speed sweep [preset].")
@click.option("--lengths", default=None, help="Speed sweep INPUTxOUTPUT token lengths, comma list, e.g. "
              "512x64,2048x64. Output length is forced (EOS ignored) [preset].")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed runs per variant and setting.")
@click.option("--repeats", type=int, default=3, show_default=True,
              help="Timed runs per variant and setting, interleaved across variants; medians with min-max.")
@click.option("--speed/--no-speed", default=True, show_default=True, help="Run the speed sweep.")
@click.option("--quality/--no-quality", default=True, show_default=True, help="Run generation + ROUGE.")
@click.option("--dataset", default=None,
              help="Comma list: cnn_dailymail, arxiv, pubmed, xsum (streamed from the hub), or bundled:<name> for "
                   "the few real examples shipped with mlx_mqa (offline) [preset].")
@click.option("--data", "data_files", multiple=True, type=click.Path(dir_okay=False),
              help="Local JSON Lines file with fields id, document, summary (repeatable); replaces the preset's "
                   "--dataset unless --dataset is also given.")
@click.option("--split", default="test", show_default=True, help="Hub dataset split.")
@click.option("--limit", type=int, default=None, help="Examples per dataset (quick preset: 6; paper: all).")
@click.option("--prefix", default="summarize: ", show_default=True, help="Task prefix put before every document.")
@click.option("--quality-lengths", default=None,
              help="INPUTxOUTPUT for generation (input truncated). Default: each dataset's paper setting "
                   "(cnn_dailymail 512x256, arxiv/pubmed 2048x512, xsum 512x64), JSONL 512x128; the quick preset's "
                   "bundled demo: 512x32.")
@click.option("--quality-batch-size", type=int, default=8, show_default=True)
@click.option("--num-beams", default="1", show_default=True,
              help="Beam width(s) for the quality runs, comma list: e.g. 1,4 runs greedy and 4-beam search on the "
                   "same examples (time per sample and ROUGE of each); speed runs are always greedy.")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for 95% intervals.")
@click.option("--torch/--no-torch", "use_torch", default=True, show_default=True, help="Run the PyTorch reference.")
@click.option("--torch-device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True,
              help="auto: mps > cuda > cpu.")
@click.option("--torch-quality", type=click.Choice(["all", "mha", "none"]), default="all", show_default=True,
              help="PyTorch quality references: one per --kv-heads value (group-mean K/V repeated), only MHA, none.")
@click.option("--decode", "decode_path", type=click.Choice(["auto", "eager", "compiled"]), default="auto",
              show_default=True, help="MLX decode loop for speed runs: compiled (mlx_mqa's compiled step, when "
              "available) or eager (model.decode + KVCache).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random weights and random speed inputs.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory [results/bench-YYYYmmdd-HHMMSS].")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Random checkpoints and conversions are cached here [$MLX_MQA_CACHE or ~/.cache/mlx_mqa].")
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
def main(model, layers, kv_heads, quantize, q_group_size, dtype, preset, batch_sizes, lengths, warmup, repeats, speed,
         quality, dataset, data_files, split, limit, prefix, quality_lengths, quality_batch_size, num_beams, bootstrap,
         use_torch, torch_device, torch_quality, decode_path, seed, out, cache_dir, plots, progress):
    """Benchmark T5 with multi-head, grouped-query and multi-query attention (Ainslie et al. 2023).

    One multi-head checkpoint is converted (mean-pooled K/V, cached) to every --kv-heads value and
    compared with the PyTorch reference (transformers, same dtype, inputs and greedy settings; for a GQA
    variant the reference is the MHA model with group-mean K/V repeated, so its ROUGE is comparable and
    its cost is the MHA cost). Speed: encoder time, decoder time per step, time per sample, tokens/s,
    peak memory, KV-cache bytes, and the decode speedup predicted by a memory-traffic model. Quality:
    ROUGE-1/2/L/Lsum F1 with bootstrap 95% intervals; predictions saved per example.

    With no arguments it runs offline in a few minutes: a small random-weight T5 (t5-small shape, 2
    layers), MHA vs GQA-2 vs MQA vs PyTorch, on 6 bundled real CNN/DailyMail examples. ROUGE of random
    weights is meaningless; the point is speed, and that MLX MHA gives PyTorch's tokens.

    \b
    Examples:
      python bench.py
      python bench.py --model random:t5-base --kv-heads 12,4,1 --batch-sizes 1,8,16 --lengths 2048x64 \\
          --repeats 1 --no-quality
      python bench.py --model google/t5-base --dataset cnn_dailymail --limit 200 --quantize 8,4
      python bench.py --model ./t5-dir --data articles.jsonl --quality-lengths 1024x128 --no-speed
    """
    from mlx_mqa import report
    from mlx_mqa.benchmark import parse_ints, parse_lengths
    from mlx_mqa.suite import BenchConfig, run

    p = PRESETS[preset]
    cfg = None
    try:
        # The offline demo shrinks its default model; a --model given explicitly keeps its real depth.
        model_given = click.get_current_context().get_parameter_source("model") == click.core.ParameterSource.COMMANDLINE
        if layers is None and preset == "quick" and model == "random:t5-small" and not model_given:
            layers = 2
        if dataset is None:
            datasets = [] if data_files else [d for d in (p["datasets"] or "").split(",") if d]
        else:
            datasets = [d.strip() for d in dataset.split(",") if d.strip()]
        # The quick preset's short generation is for its bundled demo; named datasets get their own lengths.
        ql = quality_lengths if quality_lengths is not None else p["quality_lengths"] if dataset is None else None
        cfg = BenchConfig(
            model=model, layers=layers, seed=seed, kv_heads=kv_heads,
            quantize=parse_ints(quantize, "--quantize") if quantize else (), q_group_size=int(q_group_size),
            dtype=dtype, torch=use_torch, torch_device=torch_device, torch_quality=torch_quality,
            batch_sizes=parse_ints(batch_sizes or p["batch_sizes"], "--batch-sizes"),
            lengths=parse_lengths(lengths or p["lengths"]), warmup=warmup, repeats=repeats, speed=speed,
            quality=quality, datasets=datasets, data_files=list(data_files), split=split,
            limit=limit if limit is not None else p["limit"], prefix=prefix,
            quality_lengths=parse_lengths(ql)[0] if ql else None, quality_batch_size=quality_batch_size,
            num_beams=parse_ints(num_beams, "--num-beams"), bootstrap=bootstrap, decode_path=decode_path,
            out=out or time.strftime("results/bench-%Y%m%d-%H%M%S"), cache_dir=cache_dir, plots=plots,
            progress=progress, command="python bench.py " + " ".join(sys.argv[1:]))
        if cfg.quantize and any(b not in (2, 3, 4, 5, 6, 8) for b in cfg.quantize):
            raise click.BadParameter("bit widths must be among 2, 3, 4, 5, 6, 8", param_hint="--quantize")
        started = time.perf_counter()
        res = run(cfg, log=lambda m: click.echo(f"[bench] {m}", err=True))
    except ValueError as e:
        _fail(e)
    except MlxMqaError as e:
        _fail(e)
    except KeyboardInterrupt:
        saved = Path(cfg.out) / "results.json" if cfg is not None else None
        click.echo("interrupted" + (f"; the settings finished so far are in {saved} (\"complete\": false)"
                                    if saved is not None and saved.exists() else ""), err=True)
        raise SystemExit(130)

    env = res["environment"]
    prov = res["model"]["provenance"]
    random_weights = prov["kind"] == "random"
    click.echo(f"\nmodel {res['model']['spec']} ({'RANDOM weights, seed ' + str(prov['random_weights_seed']) if random_weights else 'real checkpoint'}), "
               f"dtype {res['model']['dtype']}, MLX {env['packages'].get('mlx')} on {env['mlx_device']}"
               + (f", PyTorch {env['packages'].get('torch')} on {env['torch_device']}" if env["torch_device"] else "")
               + f", BLAS {env['blas'] or 'bundled'}, {env['cpu']} ({env['cpu_count']} cores)")
    if res["speed"]:
        click.echo("\nSpeed (medians; decode step [min-max]; speedups vs MHA of the same backend):")
        click.echo(report.speed_table(res["speed"]))
        click.echo("\nMemory-traffic model: bytes one decode step reads (decoder weights + output head + K/V cache), "
                   "predicted speedup = traffic(MHA) / traffic(G):")
        click.echo(report.traffic_table(res["speed"]))
        if res["mlx_vs_torch"]:
            click.echo("\nMLX vs PyTorch, multi-head, time per sample:")
            click.echo(report.mlx_vs_torch_lines(res["mlx_vs_torch"]))
    if res["quality"]:
        click.echo("\nQuality (ROUGE F1 %, bootstrap 95% CI):")
        if random_weights:
            click.echo("!! " + report.RANDOM_ROUGE_WARNING)
        click.echo(report.quality_table(res["quality"]))
        parity = report.mha_parity_lines(res["quality"])
        if parity:
            click.echo(parity)
        if random_weights:
            click.echo("!! " + report.RANDOM_ROUGE_WARNING)
    if res.get("quantization_agreement"):
        click.echo("\nQuantized vs float logits (teacher-forced on the reference summaries):")
        click.echo(report.agreement_table(res["quantization_agreement"]))
    click.echo(f"\nwrote {cfg.out}/: " + ", ".join(v for k, v in res["files"].items() if isinstance(v, str)))
    click.echo(f"total {time.perf_counter() - started:.0f} s")
    if random_weights:
        click.echo("\n" + report.REAL_CHECKPOINT_HINT)


if __name__ == "__main__":
    main()
