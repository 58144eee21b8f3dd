"""GPU habits from mlx-lm's generate: decode on a stream of its own, and wire the model's memory while
generating (Metal). Both are no-ops where MLX computes on the CPU."""

from __future__ import annotations

import contextlib
import threading

import mlx.core as mx

_local = threading.local()


def generation_stream():
    """A stream of this thread's own for decoding on a GPU (MLX streams belong to the thread that made them);
    None on the CPU, where the default stream is kept (the CPU engine runs streams of its own)."""
    device = mx.default_device()
    if device == mx.cpu:
        return None
    stream = getattr(_local, "stream", None)
    if stream is None or stream.device != device:
        stream = _local.stream = mx.new_stream(device)
    return stream


@contextlib.contextmanager
def on_generation_stream():
    stream = generation_stream()
    if stream is None:
        yield
        return
    with mx.stream(stream):
        yield


@contextlib.contextmanager
def wired_limit():
    """On Metal, raise the wired memory limit to the recommended working set for the duration, so weights and
    caches are not paged out between steps (as mlx-lm's generate does); restored after."""
    if not (mx.metal.is_available() and mx.default_device() == mx.gpu):
        yield
        return
    old = mx.set_wired_limit(mx.device_info()["max_recommended_working_set_size"])
    try:
        yield
    finally:
        mx.synchronize()
        mx.set_wired_limit(old)
