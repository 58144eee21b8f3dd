"""The data of an uptraining run, from the CLI's options: span corruption over a corpus read into memory or
streamed (`--stream`, sharded by rank), or supervised document -> summary pairs; with the held-out batches."""

from __future__ import annotations

from itertools import islice

import numpy as np

from ..errors import InputError


def run_data(tokenizer, o: dict):
    """(batch stream, held-out batches, a one-line description) for the options `o` of `mlx_mqa.uptrain`."""
    build = supervised_data if o["objective"] != "span" else streamed_span_data if o["stream"] else span_data
    return build(tokenizer, o["sources"], o["eval_sources"], o)


def span_data(tokenizer, sources, eval_sources, o):
    from .data import SpanCorruptionData, make_windows, read_texts, split_held_out, tokenize_stream
    from .objectives import span_lengths

    texts = read_texts(sources, field=o["source_field"])
    if eval_sources:
        train_texts, held_texts = texts, read_texts(eval_sources, field=o["source_field"])
    else:
        train_texts, held_texts = split_held_out(texts, o["eval_fraction"], seed=0)
    raw, _ = span_lengths(o["input_length"])
    stream = tokenize_stream(tokenizer, train_texts)
    train = make_windows(stream, raw)
    if len(train) == 0:
        raise InputError(
            f"the training texts hold {len(stream)} tokens, fewer than the {raw} of one window "
            f"(--input-length {o['input_length']})"
        )
    held = make_windows(tokenize_stream(tokenizer, held_texts), raw) if held_texts else train[:0]
    if len(held) > o["eval_examples"]:
        held = held[np.sort(np.random.default_rng(0).choice(len(held), o["eval_examples"], replace=False))]
    data = SpanCorruptionData(train, tokenizer, o["batch_size"], seed=o["seed"])
    evals = data.eval_batches(held, o["batch_size"]) if len(held) else []
    return (
        data,
        evals,
        f"{len(train)} windows of {raw} tokens ({o['input_length']} after corruption), {len(held)} held out",
    )


def streamed_span_data(tokenizer, sources, eval_sources, o):
    """--stream: the corpus is read lazily, each rank its own documents; the held-out windows are the first
    --eval-examples of --eval-data, or of the stream's leading documents (which training then skips)."""
    import mlx.core as mx

    from .data import iter_texts
    from .objectives import span_lengths
    from .stream import StreamedSpanData, held_out_prefix

    raw, _ = span_lengths(o["input_length"])
    held, used = held_out_prefix(eval_sources or sources, o["source_field"], tokenizer, raw, o["eval_examples"])
    if not eval_sources and next(islice(iter_texts(sources, o["source_field"], True), used, None), None) is None:
        raise InputError(
            f"the {len(held)} held-out windows take all {used} documents of the corpus: "
            f"lower --eval-examples or give --eval-data"
        )
    group = mx.distributed.init()
    data = StreamedSpanData(
        sources,
        tokenizer,
        o["batch_size"],
        raw,
        seed=o["seed"],
        field=o["source_field"],
        rank=group.rank(),
        world=group.size(),
        skip_documents=0 if eval_sources else used,
    )
    evals = data.eval_batches(held, o["batch_size"]) if len(held) else []
    where = "--eval-data" if eval_sources else f"the first {used} documents"
    desc = f"streamed windows of {raw} tokens ({o['input_length']} after corruption), {len(held)} held out from {where}"
    return data, evals, desc


def supervised_data(tokenizer, sources, eval_sources, o):
    from .data import SupervisedData, encode_pairs, read_pairs, split_held_out

    pairs = read_pairs(sources, o["source_field"], o["target_field"])
    if eval_sources:
        held_pairs = read_pairs(eval_sources, o["source_field"], o["target_field"])
    else:
        pairs, held_pairs = split_held_out(pairs, o["eval_fraction"], seed=0)
    if not pairs:
        raise InputError(f"no training pairs left after holding out --eval-fraction {o['eval_fraction']}")
    lengths = (o["max_source_length"], o["max_target_length"], o["prefix"])
    enc = encode_pairs(tokenizer, pairs, *lengths)
    held = encode_pairs(tokenizer, held_pairs[: o["eval_examples"]], *lengths)
    data = SupervisedData(enc, tokenizer, o["batch_size"], seed=o["seed"])
    return data, data.eval_batches(held, o["batch_size"]), f"{len(enc)} training pairs, {len(held)} held out"
