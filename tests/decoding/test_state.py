"""The decode state: arguments checked before any trace, a failed call leaves the model usable,
bounded caches, and one model shared by threads."""

import threading

import mlx.core as mx
import numpy as np
import pytest

import mlx_mqa.cpu.attention as cpu_attention
from mlx_mqa import generate, load_model
from mlx_mqa.decoding.generate import generate_tokens
from mlx_mqa.decoding.state import DecodeState
from mlx_mqa.errors import InputError
from tests.helpers import PROMPTS, batch


@pytest.fixture()
def model_path(hf_checkpoint):
    return hf_checkpoint("t5-small", shared_std=0.05, num_layers=1, num_decoder_layers=1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_max_new_tokens_is_refused_and_the_model_still_works(bad, model_path, tokenizer):
    fresh = generate(load_model(model_path), tokenizer, PROMPTS, max_new_tokens=6)
    model = load_model(model_path)
    with pytest.raises(InputError, match="max_new_tokens must be a positive integer"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=bad)
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=6) == fresh


@pytest.mark.parametrize("compiled", [True, False])
def test_a_call_that_fails_inside_the_trace_leaves_the_model_usable(compiled, model_path, tokenizer):
    ids, mask = (mx.array(a) for a in batch(tokenizer))
    fresh = generate_tokens(load_model(model_path), ids, mask, 6)
    model = load_model(model_path)
    decode = model.decode

    def broken(*args, **kwargs):
        raise ZeroDivisionError("inside the first trace")

    model.decode = broken
    with pytest.raises(ZeroDivisionError):
        generate_tokens(model, ids, mask, 6, compiled=compiled)
    model.decode = decode
    assert generate_tokens(model, ids, mask, 6) == fresh
    assert generate_tokens(model, ids, mask, 6, compiled=False) == fresh


def test_token_ids_outside_the_vocabulary_and_bad_masks(model_path):
    model = load_model(model_path)
    V = model.args.vocab_size
    for ids in ([[5, V]], [[-1, 4]]):
        with pytest.raises(InputError, match="outside the model's vocabulary"):
            generate_tokens(model, mx.array(ids), None, 4)
    with pytest.raises(InputError, match="all padding"):
        generate_tokens(model, mx.array([[5, 6], [7, 8]]), mx.array([[1, 1], [0, 0]]), 4)
    with pytest.raises(InputError, match="num_beams must be a positive integer"):
        generate(model, None, "x", num_beams=0)


@pytest.mark.parametrize("compiled", [True, False])
def test_stepping_past_the_cache_is_an_error(compiled, model_path):
    state = DecodeState(load_model(model_path), mx.array([[5, 6, 1]]), None, max_steps=2, compiled=compiled)
    y = mx.array([0])
    for _ in range(2):
        y = mx.argmax(state.logits(y), axis=-1)
    with pytest.raises(InputError, match="holds 2 steps"):
        state.logits(y)


def test_one_model_from_several_threads_at_once(model_path, tokenizer, monkeypatch):
    # Long inputs take the two-stream CPU path or the C kernel; MLX streams belong to the thread that made them.
    # The default step (None) is the eager one with the kernel in every layer (it evaluates under the lock).
    monkeypatch.setattr(cpu_attention, "PARALLEL_SCORES", 2**10)
    monkeypatch.setattr(cpu_attention, "KERNEL_KV_BYTES", 1)
    model = load_model(model_path)
    long_prompt = "summarize: " + " ".join(PROMPTS * 6)
    jobs = [([long_prompt], True), (PROMPTS, True), ([long_prompt], False), (PROMPTS[:2], False)]
    jobs = (jobs + [([long_prompt], None), (PROMPTS, None)]) * 2
    expected = [generate(load_model(model_path), tokenizer, p, max_new_tokens=5, compiled=c) for p, c in jobs]
    results, errors = [None] * len(jobs), []

    def work(i):
        try:
            p, c = jobs[i]
            results[i] = generate(model, tokenizer, p, max_new_tokens=5, compiled=c)
        except Exception as e:  # reported below, with the thread's job
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == expected
    assert np.all([len(r) for r in results])


def test_a_big_batch_is_encoded_in_parts_with_the_same_result(model_path, tokenizer, monkeypatch):
    """Inputs encoded a few at a time (padding included) give the one-batch encoder output and tokens."""
    import mlx_mqa.decoding.state as state

    model = load_model(model_path)
    ids, mask = (mx.array(a) for a in batch(tokenizer))
    whole = np.array(model.encode(ids, mask))
    tokens = generate_tokens(model, ids, mask, 5)
    monkeypatch.setattr(state, "ENCODE_TOKENS", ids.shape[1])  # one input per part
    monkeypatch.setattr(state, "LAYERWISE_TOKENS", 1)
    np.testing.assert_allclose(np.array(state.encode_bounded(model, ids, mask)), whole, rtol=0, atol=1e-5)
    assert generate_tokens(model, ids, mask, 5) == tokens


def test_encoder_workspace_does_not_grow_with_the_batch(model_path, monkeypatch):
    """Peak memory of building a decode state grows by the K/V and encoder output of each added input, not
    by its encoder workspace: 8 inputs cost less than 8 times one input's peak."""
    import mlx_mqa.decoding.state as state

    model = load_model(model_path)
    L = 256
    monkeypatch.setattr(state, "ENCODE_TOKENS", L)
    monkeypatch.setattr(state, "LAYERWISE_TOKENS", L)

    def peak(rows: int) -> tuple:
        ids = mx.array(np.full((rows, L), 5, np.int32))
        mx.eval(ids)
        mx.synchronize()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        s = DecodeState(model, ids, None, 4)
        mx.eval([c.keys for c in s.cross] + [c.values for c in s.cross])
        kept = s.nbytes() + rows * L * model.args.d_model * 4  # K/V and the encoder output
        return mx.get_peak_memory() - base, kept

    one, kept_one = peak(1)
    eight, kept_eight = peak(8)
    workspace = one - kept_one
    assert workspace > kept_one  # the encoder's workspace is what a part costs
    assert eight <= kept_eight + 1.5 * workspace


def test_the_model_holds_no_generation_state(model_path, tokenizer):
    """Locks and compiled steps live in decoding, not on the model, and go when the model does."""
    import gc
    import weakref

    from mlx_mqa.decoding import compiled

    model = load_model(model_path)
    before = set(vars(model)) | set(model.keys())
    generate(model, tokenizer, PROMPTS, max_new_tokens=3, compiled=True)
    assert set(vars(model)) | set(model.keys()) == before
    assert compiled.compiled_step_count(model) == 1
    ref, key = weakref.ref(model), id(model)
    del model
    gc.collect()
    assert ref() is None and key not in compiled._STEPS and key not in compiled._LOCKS


def test_compiled_steps_are_bounded_per_model(model_path, tokenizer, monkeypatch):
    """Each new prompt length is a new shape; the oldest shapes' compiled steps are dropped past the bound, and a
    dropped shape traces again with the same tokens."""
    from mlx_mqa.decoding import compiled

    monkeypatch.setattr(compiled, "MAX_COMPILED_STEPS", 3)
    model = load_model(model_path)
    words = "the cat sat on the mat and watched the dog".split()
    prompts = ["summarize: " + " ".join(words[:n]) for n in range(1, 9)]
    first = generate(model, tokenizer, prompts[0], max_new_tokens=3, compiled=True)
    for p in prompts[1:]:
        generate(model, tokenizer, p, max_new_tokens=3, compiled=True)
        assert compiled.compiled_step_count(model) <= 3
    assert generate(model, tokenizer, prompts[0], max_new_tokens=3, compiled=True) == first


def test_a_long_input_lets_other_threads_use_the_model_between_layers(hf_checkpoint, monkeypatch):
    """A long input is encoded one layer at a time, each evaluated outside the model's lock: another thread can
    take the lock while any layer runs, and the output is the one-graph encoder's."""
    import mlx_mqa.decoding.state as state
    from mlx_mqa.decoding.compiled import model_lock

    model = load_model(hf_checkpoint("t5-small", shared_std=0.05, num_layers=3, num_decoder_layers=1))
    ids = mx.array(np.arange(3, 3 + 2 * 40, dtype=np.int32).reshape(2, 40))
    whole = np.array(model.encode(ids))
    lock, free = model_lock(model), []

    class Probe:  # mlx.core as the decode state sees it: at each eval, can another thread take the lock?
        def __getattr__(self, name):
            return getattr(mx, name)

        def eval(self, *arrays):
            got = []
            t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=5) and (lock.release() or True)))
            t.start()
            t.join()
            free.append(got == [True])
            return mx.eval(*arrays)

    monkeypatch.setattr(state, "LAYERWISE_TOKENS", 64)
    monkeypatch.setattr(state, "mx", Probe())
    out = np.array(state.encode_bounded(model, ids, None))
    assert free == [True] * 3
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize("kw", [dict(max_new_tokens=10**7), dict(max_new_tokens=64, num_beams=10**4)], ids=str)
def test_decodes_larger_than_the_machine_are_refused_before_allocating(kw, model_path, tokenizer):
    """A cache of 10**7 steps or 10**4 beams is refused with the size it would need, before anything is built."""
    model = load_model(model_path)
    before = mx.get_peak_memory()
    with pytest.raises(InputError, match=r"GiB .* this machine has .* GiB: lower max_new_tokens"):
        generate(model, tokenizer, PROMPTS, **kw)
    assert mx.get_peak_memory() - before < 2**30
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=3)


@pytest.mark.parametrize("n_positions, limit", [(24, 24), (None, 512)])
def test_prompts_are_limited_by_default_to_the_models_input_length(n_positions, limit, hf_checkpoint, tokenizer):
    """With no max_input_tokens, a prompt longer than the config's n_positions (else 512) is refused, naming the
    limit; an explicit limit overrides the default."""
    model = load_model(hf_checkpoint("t5-small", shared_std=0.05, num_layers=1, num_decoder_layers=1))
    model.args.n_positions = n_positions
    long_prompt = "summarize: " + " ".join(["word"] * (limit + 8))
    with pytest.raises(InputError, match=f"more than max_input_tokens={limit}"):
        generate(model, tokenizer, long_prompt, max_new_tokens=2)
    for kw in (dict(max_input_tokens=4 * limit), dict(truncate=True)):  # no error (the text of random weights)
        assert isinstance(generate(model, tokenizer, long_prompt, max_new_tokens=2, **kw), str)


def test_ctrl_c_during_a_long_encode_lands_within_a_layer_and_frees_the_model(hf_checkpoint, monkeypatch):
    """A SIGINT delivered while the first layer evaluates interrupts the encode before a later layer runs, and the
    model's lock is free afterwards (an app's other threads keep the model)."""
    import signal

    import mlx_mqa.decoding.state as state
    from mlx_mqa.decoding.compiled import model_lock

    model = load_model(hf_checkpoint("t5-small", shared_std=0.05, num_layers=6, num_decoder_layers=1))
    ids = mx.array(np.arange(3, 3 + 2048, dtype=np.int32).reshape(1, 2048))
    main, evals = threading.get_ident(), []

    class Probe:  # at the first layer's eval, a SIGINT arrives from another thread while MLX evaluates
        def __getattr__(self, name):
            return getattr(mx, name)

        def eval(self, *arrays):
            evals.append(len(evals))
            if len(evals) > 1:
                return mx.eval(*arrays)
            sent = threading.Event()

            def interrupt():
                signal.pthread_kill(main, signal.SIGINT)
                sent.set()

            threading.Timer(0.01, interrupt).start()
            out = mx.eval(*arrays)
            sent.wait(timeout=30)  # on a loaded CPU the timer may fire after this eval: still within the layer
            return out

    monkeypatch.setattr(state, "mx", Probe())
    # A shell starts background jobs with SIGINT ignored, and Python keeps that: Ctrl-C's handler, explicitly.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            state.encode_bounded(model, ids, None)
            mx.eval(mx.zeros(1))  # not reached: the signal lands within the layers
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(evals) <= 2 < 6
    lock = model_lock(model)
    assert lock.acquire(timeout=1)
    lock.release()
