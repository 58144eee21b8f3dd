"""A hard testbed for K/V-head merging: random-weight T5 of a real shape (t5-small by default), calibrated on one
dataset (cnn_dailymail) and evaluated on another (xsum) by teacher-forced next-token KL(MHA || converted) per
target token and top-1 agreement, over the full 32,128-entry vocabulary.

The multi-head model is the teacher: matching it is well defined whatever its weights. With the bundled 4,100-id
tokenizer only ids < 4,100 ever appear as inputs; the KL is still over every logit (the unused rows of the
embedding take part in the softmax as in the real model).

    python experiments/hard_testbed.py                 # 3 model seeds x {mean, fit, svd, svd-q} x G in {1, 2, 4}
    python experiments/hard_testbed.py --report        # table + plot from the JSON

Library use (refine_testbed.py, recovery.py): `Testbed(seed)` holds the teacher, the calibration statistics, the
calibration and the held-out batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_mqa  # noqa: E402,F401
from mlx_mqa import load_model  # noqa: E402
from mlx_mqa.checkpoint.load import load_tokenizer  # noqa: E402
from mlx_mqa.checkpoint.random_init import save_random_checkpoint  # noqa: E402
from mlx_mqa.conversion import convert_model  # noqa: E402
from mlx_mqa.conversion.calibration import calibrate, read_pairs, tokenize_pairs  # noqa: E402
from mlx_mqa.conversion.refine import divergence, refine_batches  # noqa: E402

DATA = Path("/work/shared/data")
CONFIGS = ROOT / "mlx_mqa" / "assets" / "t5-configs"
TOKENIZER = ROOT / "mlx_mqa" / "assets" / "tokenizer"
RESULTS = ROOT / "experiments" / "results"
METHODS = ("mean", "fit", "svd", "svd-q")
GS = (1, 2, 4)
PREFIX = "summarize: "


class Testbed:
    """Teacher (random weights, real shape), calibration statistics on `calib` and batches of both sets."""

    def __init__(
        self,
        seed: int,
        shape: str = "t5-small",
        calib: str = "cnn_dailymail",
        held_out: str = "xsum",
        calib_samples: int = 64,
        eval_samples: int = 48,
        lengths=(256, 64),
        batch_size: int = 8,
        calib_lengths=None,
        stats: bool = True,
        shared_std: float = 1.0,
        overrides=None,
    ):
        cfg = {**json.loads((CONFIGS / f"{shape}.json").read_text()), **(overrides or {})}
        calib_lengths = calib_lengths or lengths
        self.tok = load_tokenizer(TOKENIZER)
        with tempfile.TemporaryDirectory() as d:
            save_random_checkpoint(cfg, Path(d) / "m", seed=seed, tokenizer=self.tok, shared_std=shared_std)
            self.teacher = load_model(Path(d) / "m", dtype="float32")
        self.calib_file = str(DATA / calib / "sample.jsonl")
        self.settings = dict(
            seed=seed,
            shape=shape,
            calib=calib,
            held_out=held_out,
            calib_samples=calib_samples,
            eval_samples=eval_samples,
            lengths=list(lengths),
            calib_lengths=list(calib_lengths),
            batch_size=batch_size,
            shared_std=shared_std,
            overrides=overrides or {},
        )
        self.calib_examples = tokenize_pairs(
            self.tok, read_pairs(self.calib_file, calib_samples), *calib_lengths, PREFIX
        )
        self.calib_batches = refine_batches(self.calib_examples, batch_size)
        # held-out: the last records of the other dataset
        pairs = read_pairs(str(DATA / held_out / "sample.jsonl"))[-eval_samples:]
        self.eval_batches = refine_batches(tokenize_pairs(self.tok, pairs, *lengths, PREFIX), batch_size)
        self.eval_enc = [self.teacher.encode(b["input_ids"], b["attention_mask"]) for b in self.eval_batches]
        mx.eval(self.eval_enc)
        self.stats = None
        if stats:
            self.stats = calibrate(
                self.teacher, self.tok, self.calib_file, calib_samples, *calib_lengths, batch_size, PREFIX
            )

    def convert(self, G: int, method: str):
        return convert_model(self.teacher, G, method, stats=self.stats if method != "mean" else None)

    def held_out(self, model, shared_encoder: bool = True) -> dict:
        """KL(MHA || model) per target token and top-1 agreement on the held-out set (decoder-only conversions
        share the teacher's encoder, whose outputs are computed once)."""
        return divergence(model, self.teacher, self.eval_batches, self.eval_enc if shared_encoder else None)

    def tokens(self) -> dict:
        cal_dec = sum(int((b["labels"] != -100).sum().item()) for b in self.calib_batches)
        cal_enc = sum(int(b["attention_mask"].sum().item()) for b in self.calib_batches)
        ev = sum(int((b["labels"] != -100).sum().item()) for b in self.eval_batches)
        return {"calib_encoder_tokens": cal_enc, "calib_target_tokens": cal_dec, "held_out_target_tokens": ev}


def write_table(lines, name: str) -> None:
    """A markdown table into results/ and onto stdout."""
    (RESULTS / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def effective_ranks(stats) -> dict:
    """Per decoder layer: the number of eigenvalues of the second moment of the self-attention input (the K/V
    input of self-attention), the cross-attention query input, and the encoder output (the K/V input of every
    cross-attention) that hold 90% and 99% of its trace, and the participation ratio (sum l)^2 / sum l^2."""

    def rank(m):
        ev = np.clip(np.linalg.eigvalsh(m)[::-1], 0, None)
        c = np.cumsum(ev) / ev.sum()
        return {
            "r90": int(np.searchsorted(c, 0.9) + 1),
            "r99": int(np.searchsorted(c, 0.99) + 1),
            "participation": float(ev.sum() ** 2 / (ev**2).sum()),
        }

    return {
        "self_input": [rank(a.second_moment()) for a in stats.self_inputs],
        "cross_query": [rank(a.second_moment()) for a in stats.cross_queries],
        "encoder_out": rank(stats.encoder_out.second_moment()),
    }


def kv_capacity(model, stats, gs=GS) -> dict:
    """Per decoder layer and G: the share of the energy of the stacked K (V) outputs of all heads that G shared
    heads of d_kv dimensions can hold at best (contiguous groups: the top d_kv eigenvalues of each group's output
    second moment W_g S W_g^T over its trace). 1 - share bounds what any merge of this input leaves out."""
    dk, H = model.args.d_kv, model.args.num_heads

    def share(w, s, G):
        groups = np.split(np.array(w, dtype=np.float64), G, axis=0)
        kept = total = 0.0
        for wg in groups:
            ev = np.clip(np.linalg.eigvalsh(wg @ s @ wg.T)[::-1], 0, None)
            kept, total = kept + ev[:dk].sum(), total + ev.sum()
        return float(kept / total)

    out = {}
    enc = stats.encoder_out.second_moment().astype(np.float64)
    for G in gs:
        if H % G:
            continue
        rows = []
        for i, b in enumerate(model.decoder.block):
            sa, ca = b.layer[0].SelfAttention, b.layer[1].EncDecAttention
            s_in = stats.self_inputs[i].second_moment().astype(np.float64)
            rows.append(
                {
                    "self_k": share(sa.k.weight, s_in, G),
                    "self_v": share(sa.v.weight, s_in, G),
                    "cross_k": share(ca.k.weight, enc, G),
                    "cross_v": share(ca.v.weight, enc, G),
                }
            )
        out[str(G)] = rows
    return out


def ranks(seed: int = 0):
    tb = Testbed(seed)
    out = RESULTS / "hard_testbed.json"
    res = json.loads(out.read_text())
    res["effective_ranks"] = {"seed": seed, "d_model": tb.teacher.args.d_model, **effective_ranks(tb.stats)}
    res["kv_capacity"] = kv_capacity(tb.teacher, tb.stats)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["effective_ranks"]))


def stem(shape: str) -> str:
    """Results file name: t5-small keeps the original one."""
    return "hard_testbed" if shape == "t5-small" else f"hard_testbed_{shape}"


def run(args):
    out = RESULTS / f"{stem(args.shape)}.json"
    res = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done = {(r["seed"], r["G"], r["method"]) for r in res["runs"]}
    for seed in args.seeds:
        if all((seed, G, m) in done for G in GS for m in args.methods):
            continue
        t0 = time.perf_counter()
        tb = Testbed(seed, args.shape, calib_samples=args.calib_samples, eval_samples=args.eval_samples)
        res["settings"] = {
            **tb.settings,
            "seed": None,
            **tb.tokens(),
            "vocab_size": tb.teacher.args.vocab_size,
            "tokenizer_ids": len(tb.tok),
        }
        print(f"seed {seed}: testbed ready in {time.perf_counter() - t0:.0f}s", flush=True)
        for G in GS:
            for m in args.methods:
                if (seed, G, m) in done:
                    continue
                t1 = time.perf_counter()
                d = tb.held_out(tb.convert(G, m))
                res["runs"].append({"seed": seed, "G": G, "method": m, **d, "seconds": time.perf_counter() - t1})
                print(f"  G={G} {m:6s} KL {d['kl']:.4f} top1 {d['top1']:.3f}", flush=True)
                out.write_text(json.dumps(res, indent=1))
    report(args.shape)


def summary(runs):
    """(G, method) -> mean/sd of KL, top-1 and of the KL ratio to mean pooling's (per seed)."""
    by = {}
    for r in runs:
        by.setdefault((r["G"], r["method"]), {})[r["seed"]] = r
    out = {}
    for (G, m), rs in by.items():
        seeds = sorted(rs)
        kl = np.array([rs[s]["kl"] for s in seeds])
        top = np.array([rs[s]["top1"] for s in seeds])
        ratio = np.array([rs[s]["kl"] / by[(G, "mean")][s]["kl"] for s in seeds if s in by.get((G, "mean"), {})])
        out[(G, m)] = dict(
            kl=kl.mean(),
            kl_sd=kl.std(ddof=1) if len(kl) > 1 else 0.0,
            top1=top.mean(),
            top1_sd=top.std(ddof=1) if len(top) > 1 else 0.0,
            ratio=ratio.mean(),
            ratio_sd=ratio.std(ddof=1) if len(ratio) > 1 else 0.0,
            seeds=len(seeds),
        )
    return out


def report(shape: str = "t5-small"):
    res = json.loads((RESULTS / f"{stem(shape)}.json").read_text())
    s = summary(res["runs"])
    st = res["settings"]
    lines = [
        f"Random-weight {st['shape']} shape, calibrated on {st['calib']} ({st['calib_samples']} records, "
        f"{st['calib_encoder_tokens']} encoder / {st['calib_target_tokens']} target tokens), evaluated on "
        f"{st['held_out']} ({st['eval_samples']} records, {st['held_out_target_tokens']} target tokens), lengths "
        f"{st['lengths'][0]}x{st['lengths'][1]}; KL over all {st['vocab_size']} logits (tokenizer: "
        f"{st['tokenizer_ids']} ids). Mean ± sd over model seeds.",
        "",
        "| G | method | KL(MHA ‖ conv) per token | top-1 agreement | KL / mean's KL | seeds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for G in GS:
        for m in METHODS:
            if (G, m) in s:
                r = s[(G, m)]
                lines.append(
                    f"| {G} | {m} | {r['kl']:.4f} ± {r['kl_sd']:.4f} | {r['top1']:.3f} ± {r['top1_sd']:.3f} | "
                    f"{r['ratio']:.2f} ± {r['ratio_sd']:.2f} | {r['seeds']} |"
                )
    write_table(lines, f"{stem(shape)}_table.md")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m in METHODS:
        gs = [G for G in GS if (G, m) in s]
        if not gs:
            continue
        axes[0].errorbar(gs, [s[(G, m)]["kl"] for G in gs], [s[(G, m)]["kl_sd"] for G in gs], marker="o", label=m)
        axes[1].errorbar(gs, [s[(G, m)]["top1"] for G in gs], [s[(G, m)]["top1_sd"] for G in gs], marker="o", label=m)
    axes[0].set(xlabel="K/V heads G", ylabel="KL(MHA || converted) per token, held-out", xticks=GS)
    axes[1].set(xlabel="K/V heads G", ylabel="top-1 agreement with MHA", xticks=GS)
    axes[0].legend()
    fig.suptitle(f"hard testbed: random-weight {st['shape']}, calib {st['calib']} -> eval {st['held_out']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem(shape)}.png", dpi=110)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--shape", default="t5-small")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=48)
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    p.add_argument("--report", action="store_true")
    p.add_argument("--ranks", action="store_true", help="effective ranks and K/V capacity (seed 0)")
    a = p.parse_args()
    ranks() if a.ranks else report(a.shape) if a.report else run(a)
