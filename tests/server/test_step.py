"""The batch step alone: rows joining at different steps and leaving early decode as generate() does alone."""

import mlx.core as mx

from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.decoding.state import encode_bounded
from mlx_mqa.server.step import BatchState
from tests.helpers import PROMPTS


def test_rows_joining_and_leaving_decode_as_alone(tiny_mha):
    import mlx_mqa

    model, tok = mlx_mqa.load(str(tiny_mha))
    steps = {0: 12, 1: 20, 2: 7}  # tokens per prompt: rows leave at different steps
    ids = {i: mx.array([tok(p)["input_ids"]]) for i, p in enumerate(PROMPTS)}
    want = {i: generate_tokens(model, ids[i], max_new_tokens=n, ignore_eos=True)[0] for i, n in steps.items()}
    # Row 1 reaches column 20: compacted. Cross buckets of 8 tokens: the padded length grows and shrinks.
    batch = BatchState(model, capacity=20, cross_bucket=8)
    joins = {0: 0, 3: 1, 9: 2}  # global step -> prompt
    live, last, got = [], [], {i: [] for i in steps}
    cross_lengths = set()
    for t in range(64):
        if t in joins:
            i = joins[t]
            batch.add(model.cross_kv(encode_bounded(model, ids[i], None)), ids[i].shape[1])
            live.append(i)
            last.append(model.args.decoder_start_token_id)
        if not live:
            break
        cross_lengths.add(batch.cross_keys[0].shape[2])
        tokens = mx.argmax(batch.logits(mx.array(last, dtype=mx.int32)), axis=-1).tolist()
        keep = []
        for r, (i, tk) in enumerate(zip(live, tokens)):
            got[i].append(tk)
            if len(got[i]) < steps[i]:
                keep.append(r)
        live, last = [live[r] for r in keep], [tokens[r] for r in keep]
        batch.keep(keep)
    assert got == want
    assert batch.compactions >= 1 and batch.n == 0
    assert len(cross_lengths) >= 3, cross_lengths
