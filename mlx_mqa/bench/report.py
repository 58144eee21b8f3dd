"""What a user sees: plain-text tables of a results dict (the CLI prints them) and progress bars on stderr."""

from __future__ import annotations

from typing import List, Sequence

from .rouge import METRICS

RANDOM_ROUGE_WARNING = (
    "ROUGE of random weights is MEANINGLESS: it only shows that the pipeline runs and whether "
    "MLX and PyTorch produce the same tokens."
)
REAL_CHECKPOINT_HINT = """\
To benchmark a real checkpoint (needs the model hub, or a local copy of the checkpoint):
  python bench.py --model google/t5-base --dataset cnn_dailymail --limit 200 --kv-heads 12,4,1
  python bench.py --model google/t5-large-lm-adapt --preset paper --limit 500
  python bench.py --model ./my-t5-dir --data my_articles.jsonl      # offline: JSONL with id, document, summary
Note: GQA/MQA made by mean pooling need uptraining (Ainslie et al. 2023) before their ROUGE approaches MHA's."""


def _table(columns, rows: Sequence[dict], left: int = 1) -> str:
    """`columns`: (header, cell of a row) pairs; the first `left` columns left-aligned, the others right."""
    cells = [[str(h) for h, _ in columns]] + [[str(cell(r)) for _, cell in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]

    def fmt(line):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(c) for c in cells[1:]])


def _ms(x: float) -> str:
    return f"{1000 * x:.1f}" if x < 10 else f"{1000 * x:.0f}"


def _mb(x) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _lengths(r: dict) -> str:
    return f"{r['input_len']}->{r['output_len']}"


def _range(d: dict) -> str:
    return f"{_ms(d['median'])} [{_ms(d['min'])}-{_ms(d['max'])}]"


def _torch_name(r: dict) -> str:
    return ("torch " if r["backend"] == "torch" and not r["variant"].startswith("torch") else "") + r["variant"]


def _mlx_only(key: str):
    return lambda r: _x(r.get(key)) if r["backend"] == "mlx" else "-"


SPEED = [
    ("variant", _torch_name),
    ("B", lambda r: r["batch_size"]),
    ("in->out", _lengths),
    ("encoder ms", lambda r: _ms(r["encoder_s"]["median"])),
    ("decode ms/step [min-max]", lambda r: _range(r["decode_step_s"])),
    ("ms/sample", lambda r: _ms(r["time_per_sample_s"]["median"])),
    ("gen tok/s", lambda r: f"{r['tokens_per_s']['median']:.0f}"),
    ("peak MiB", lambda r: _mb(r["peak_memory_bytes"])),
    ("KV MiB", lambda r: _mb(r["kv_cache_bytes"])),
    ("decode speedup", _mlx_only("measured_decode_speedup")),
    ("predicted", _mlx_only("predicted_decode_speedup")),
]
TRAFFIC = [  # the memory-traffic model next to the measurement, MLX variants only
    ("variant", lambda r: r["variant"]),
    ("B", lambda r: r["batch_size"]),
    ("in->out", _lengths),
    ("weights MiB/step", lambda r: _mb(r["traffic_bytes_per_step"]["weights"])),
    ("KV MiB/step", lambda r: _mb(r["traffic_bytes_per_step"]["kv_self"] + r["traffic_bytes_per_step"]["kv_cross"])),
    ("total MiB/step", lambda r: _mb(r["traffic_bytes_per_step"]["total"])),
    ("predicted speedup", lambda r: _x(r.get("predicted_decode_speedup"))),
    ("measured speedup", lambda r: _x(r.get("measured_decode_speedup"))),
]
SHORT = {"rouge1": "R1", "rouge2": "R2", "rougeL": "RL", "rougeLsum": "RLsum"}
QUALITY = [
    ("dataset", lambda q: q["dataset"]),
    ("variant", _torch_name),
    ("beams", lambda q: q["num_beams"]),
    ("n", lambda q: q["n"]),
    ("in->out", _lengths),
    *[
        (SHORT[m] + " [95% CI]", lambda q, m=m: "{mean:.1f} [{low:.1f},{high:.1f}]".format(**q["rouge"][m]))
        for m in METRICS
    ],
    ("s/sample", lambda q: f"{q['time_per_sample_s']:.3f}"),
    (
        "tokens = torch",
        lambda q: (
            "{identical}/{total}".format(**q["tokens_match_reference"]) if q.get("tokens_match_reference") else "-"
        ),
    ),
]
AGREEMENT = [
    ("variant", lambda r: r["variant"]),
    ("vs", lambda r: r["reference"]),
    ("dataset", lambda r: r["dataset"]),
    ("positions", lambda r: r["positions"]),
    ("top-1 agreement", lambda r: f"{100 * r['top1_agreement']:.1f}%"),
    ("max |diff|", lambda r: f"{r['max_abs_diff']:.3g}"),
    ("logit scale", lambda r: f"{r['reference_logit_scale']:.3g}"),
]


def mlx_vs_torch_line(r: dict) -> str:
    ratio = r["torch_over_mlx"]
    verdict = f"MLX {ratio:.2f}x faster" if ratio >= 1 else f"PyTorch {1 / ratio:.2f}x faster"
    return (
        f"B={r['batch_size']} {_lengths(r)}: MLX {r['mlx_variant']} {r['mlx_time_per_sample_s']:.3f} s/sample, "
        f"PyTorch MHA {r['torch_time_per_sample_s']:.3f} s/sample "
        f"({verdict}; decode step {_ms(r['mlx_decode_step_s'])} vs {_ms(r['torch_decode_step_s'])} ms, "
        f"encoder {_ms(r['mlx_encoder_s'])} vs {_ms(r['torch_encoder_s'])} ms)"
    )


def mha_parity_lines(quality: Sequence[dict]) -> List[str]:
    """Whether the MLX multi-head ROUGE equals PyTorch's on the same examples (same tokens)."""
    out = []
    for q in quality:
        if q["backend"] != "mlx" or q["kv_heads"] != q["num_heads"] or q.get("quantize_bits"):
            continue
        key = ("torch", q["dataset"], q["kv_heads"], q["num_beams"])
        ref = next((t for t in quality if (t["backend"], t["dataset"], t["kv_heads"], t["num_beams"]) == key), None)
        if ref is None:
            continue
        match = q.get("tokens_match_reference") or {}
        same = all(abs(q["rouge"][m]["mean"] - ref["rouge"][m]["mean"]) < 1e-9 for m in METRICS)
        out.append(
            f"{q['dataset']} ({q['num_beams']} beam(s)): MLX MHA vs PyTorch MHA: tokens identical on "
            f"{match.get('identical')}/{match.get('total')} examples; ROUGE {'equal' if same else 'DIFFERENT'} "
            f"(R1 {q['rouge']['rouge1']['mean']:.2f} vs {ref['rouge']['rouge1']['mean']:.2f})"
        )
    return out


def reference_lines(quality: Sequence[dict]) -> List[str]:
    """Which variants have no PyTorch token reference (those not mean-pooled in contiguous groups)."""
    other = [
        q["variant"]
        for q in quality
        if q["backend"] == "mlx" and (q.get("pool", "mean"), q.get("grouping", "contiguous")) != ("mean", "contiguous")
    ]
    if not other or not any(q["backend"] == "torch" for q in quality):
        return []
    names = ", ".join(dict.fromkeys(other))
    return [
        "tokens = torch: the PyTorch reference of a GQA/MQA variant is MHA with each group's mean K/V head "
        f"repeated, so only mean variants in contiguous groups are compared with it; not {names}."
    ]


def environment_line(res: dict) -> str:
    """Which weights, dtype, frameworks, devices, BLAS and CPU the figures were measured with."""
    env, prov = res["environment"], res["model"]["provenance"]
    weights = f"RANDOM weights, seed {prov['random_weights_seed']}" if prov["kind"] == "random" else "real checkpoint"
    torch = f", PyTorch {env['packages'].get('torch')} on {env['torch_device']}" if env["torch_device"] else ""
    return (
        f"model {res['model']['spec']} ({weights}), dtype {res['model']['dtype']}, "
        f"MLX {env['packages'].get('mlx')} on {env['mlx_device']}{torch}, BLAS {env['blas'] or 'bundled'}, "
        f"{env['cpu']} ({env['cpu_count']} cores)"
    )


def summary(res: dict) -> str:
    """Everything the CLI prints after a run, before the list of files: environment and every table."""
    random_weights = res["model"]["provenance"]["kind"] == "random"
    out = ["", environment_line(res)]
    if res["speed"]:
        out += [
            "",
            "Speed (medians; decode step [min-max]; speedups vs MHA of the same backend):",
            _table(SPEED, res["speed"]),
            *(["Note: " + res["speed_note"]] if res.get("speed_note") else []),
            "",
            "Memory-traffic model: bytes one decode step reads (decoder weights + output head + K/V cache), "
            "predicted speedup = traffic(MHA) / traffic(G):",
            _table(TRAFFIC, [r for r in res["speed"] if r["backend"] == "mlx"]),
        ]
        if res["mlx_vs_torch"]:
            out += ["", "MLX vs PyTorch, multi-head, time per sample:", *map(mlx_vs_torch_line, res["mlx_vs_torch"])]
    if res.get("budget"):
        from .research.budget import budget_summary

        b = res["budget"]
        out += ["", f"Largest batch within the memory budget ({b['input_len']} -> {b['output_len']} tokens):"]
        out += budget_summary(b["rows"])
    if res["quality"]:
        warning = ["!! " + RANDOM_ROUGE_WARNING] if random_weights else []
        out += [
            "",
            "Quality (ROUGE F1 %, bootstrap 95% CI):",
            *warning,
            _table(QUALITY, res["quality"], left=2),
            *mha_parity_lines(res["quality"]),
            *reference_lines(res["quality"]),
            *warning,
        ]
    if res.get("quantization_agreement"):
        out += [
            "",
            "Quantized vs float logits (teacher-forced on the reference summaries):",
            _table(AGREEMENT, res["quantization_agreement"], left=3),
        ]
    return "\n".join(out)
