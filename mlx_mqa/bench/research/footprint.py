"""Peak memory of one speed run in a fresh process (no allocator holding memory from an earlier run):
`measure(Probe(...))`. The child loads the checkpoint, runs one `mlx_run` or `torch_run` and reports its peak
resident set minus that after the imports (plus MLX's own peak on a GPU, whose buffers are not resident pages).

    python -m mlx_mqa.bench.research.footprint '{"path": ..., "impl": "mlx", "batch": 4, ...}'   # one JSON line out
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Optional

from ...errors import MlxMqaError


@dataclass(frozen=True)
class Probe:
    path: str  # a converted MLX checkpoint (impl mlx) or the Hugging Face source (impl torch)
    impl: str  # mlx | torch
    batch: int
    input_len: int
    output_len: int
    dtype: str = "float32"
    decode_path: str = "auto"
    seed: int = 0


@dataclass
class Footprint:
    batch: int
    peak_bytes: int
    kv_bytes: int
    encoder_s: float
    decode_s: float
    output_len: int
    decode_step: str = ""  # MLX: the step that ran (compiled or eager)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of the whole run, encoder included."""
        return self.batch * self.output_len / (self.encoder_s + self.decode_s)


def measure(probe: Probe, timeout_s: Optional[float] = None) -> Footprint:
    """Run `probe` in a fresh Python process; its peak memory and timings."""
    cmd = [sys.executable, "-m", "mlx_mqa.bench.research.footprint", json.dumps(asdict(probe))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MlxMqaError(f"the {probe.impl} run at batch {probe.batch} took over {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        killed = done.returncode < 0 or done.returncode == 137
        why = "was killed (out of memory?)" if killed else f"failed: {lines[-1] if lines else done.returncode}"
        raise MlxMqaError(f"the {probe.impl} run at batch {probe.batch} {why}")
    return Footprint(**json.loads(done.stdout.strip().splitlines()[-1]))


def _child(probe: Probe) -> Footprint:
    # isort: off
    import mlx_mqa  # noqa: F401  (loads the fast BLAS before mlx.core)

    # isort: on
    import numpy as np

    from .. import speed as sp
    from ..speed import current_rss, peak_rss

    if probe.impl == "torch":
        from transformers import T5ForConditionalGeneration  # noqa: F401  (its code is not the run's memory)

        from ..torch_reference import load_reference

        base = current_rss()
        model = load_reference(probe.path, dtype=probe.dtype)
        vocab, eos = model.config.vocab_size, model.config.eos_token_id

        def run(ids):
            return sp.torch_run(model, ids, probe.output_len)
    else:
        from ...checkpoint.load import load_model

        base = current_rss()
        model = load_model(probe.path)
        vocab, eos = model.args.vocab_size, model.args.eos_token_id

        def run(ids):
            return sp.mlx_run(model, ids, probe.output_len, path=probe.decode_path)

    setting = sp.Setting(probe.batch, probe.input_len, probe.output_len)
    sample = run(np.asarray(sp.random_inputs(setting, vocab, probe.seed, eos)))
    return Footprint(
        batch=probe.batch,
        peak_bytes=peak_rss() - base + _device_peak(probe.impl),
        kv_bytes=sample.kv_self_bytes + sample.kv_cross_bytes,
        encoder_s=sample.encoder_s,
        decode_s=sample.decode_s,
        output_len=probe.output_len,
        decode_step=sample.decode_step,
    )


def _device_peak(impl: str) -> int:
    """Memory a GPU backend holds outside the resident set: MLX's Metal/CUDA buffers (0 on CPU)."""
    if impl != "mlx":
        return 0
    import mlx.core as mx

    return 0 if mx.default_device() == mx.cpu else int(mx.get_peak_memory())


if __name__ == "__main__":
    print(json.dumps(asdict(_child(Probe(**json.loads(sys.argv[1]))))))
