"""What generation keeps per model, outside the model: the lock that serializes graph building on it and its
compiled decode steps, a bounded number per model, by shape.

Nothing here keeps a model alive: a step holds the model's child modules (its arrays, the compiled function's
implicit inputs) and a weak reference to the model; what is kept for a model goes when the model does.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Callable, Dict, Tuple

import mlx.core as mx

from ..models.cache import CrossKV, StaticKVCache

# Compiled steps kept per model: each holds traces for one shape (rows, cache capacity, cross length), so an app
# with many prompt lengths retraces an evicted shape instead of growing without bound.
MAX_COMPILED_STEPS = 8

_GUARD = threading.Lock()
_LOCKS: Dict[int, threading.RLock] = {}
_STEPS: Dict[int, "OrderedDict[Tuple, Tuple[tuple, Callable]]"] = {}


def _forget(key: int) -> None:
    with _GUARD:
        _LOCKS.pop(key, None)
        _STEPS.pop(key, None)


def _entry(model) -> int:
    """id(model), registered so that what is kept for it is dropped when the model is collected."""
    key = id(model)
    if key not in _LOCKS:
        _LOCKS[key] = threading.RLock()
        _STEPS[key] = OrderedDict()
        weakref.finalize(model, _forget, key)
    return key


def model_lock(model) -> threading.RLock:
    """The lock that serializes graph building (and compiled-step tracing) on one model."""
    with _GUARD:
        return _LOCKS[_entry(model)]


def compiled_decode_step(model, shape: Tuple) -> Callable:
    """One decoder step traced once for `shape` and replayed: no Python graph building per token.

    The model's child modules are the step's implicit inputs, so updated weights (after training) are used;
    replaced children (a quantized embedding) make a new step.
    """
    children = tuple(model.children().values())
    with _GUARD:
        steps = _STEPS[_entry(model)]
        found = steps.get(shape)
        if found is not None and all(a is b for a, b in zip(found[0], children)):
            steps.move_to_end(shape)
            return found[1]
        fn = _make_step(weakref.ref(model), children)
        steps[shape] = (children, fn)
        while len(steps) > MAX_COMPILED_STEPS:
            steps.popitem(last=False)
    return fn


def discard_compiled_steps(model) -> None:
    """Drop a model's compiled steps (after a failed trace, which may leave them inconsistent)."""
    with _GUARD:
        _STEPS[_entry(model)].clear()


def compiled_step_count(model) -> int:
    with _GUARD:
        return len(_STEPS.get(id(model), ()))


def _make_step(model_ref, children) -> Callable:
    def step(y, offset, keys, values, cross_keys, cross_values, attention_mask):
        cache = [StaticKVCache(k, v, offset) for k, v in zip(keys, values)]
        cross = [CrossKV(k, v) for k, v in zip(cross_keys, cross_values)]
        logits = model_ref().decode(y, cross, attention_mask, cache)[:, -1, :]
        return logits, [c.keys for c in cache], [c.values for c in cache]

    return mx.compile(step, inputs=list(children))
