"""What the benchmark compares: one multi-head checkpoint (hub id, local directory, or `random:<name>`, random
weights of a shape in `mlx_mqa/assets/t5-configs`), converted to several K/V head counts by one or more methods
(`--pool`, in `--grouping` groups). Random checkpoints and conversions are cached, the latter keyed by a
fingerprint of the source and, unless mean pooling in contiguous groups, the method and calibration."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from .. import paths
from ..checkpoint.files import atomic_directory
from ..checkpoint.hf import read_config, resolve
from ..conversion import METHODS, Calibration, check_options, convert
from ..conversion.calibration import BUNDLED
from ..conversion.converter import needs_calibration
from ..errors import CheckpointError, ConfigError
from ..models.config import check_kv_heads, valid_kv_heads

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RANDOM_PREFIX = "random:"
CACHE_VERSION = 1


def random_model_names() -> List[str]:
    return sorted(p.stem for p in (ASSETS / "t5-configs").glob("*.json"))


@dataclass
class ModelSource:
    spec: str  # as given on the command line
    path: Path  # a local multi-head Hugging Face checkpoint directory
    config: dict
    random_seed: Optional[int] = None
    overrides: dict = field(default_factory=dict)

    @property
    def num_heads(self) -> int:
        return int(self.config["num_heads"])

    @property
    def is_random(self) -> bool:
        return self.random_seed is not None

    def provenance(self) -> dict:
        """What the weights are: a real checkpoint (hub id or directory) or random (with its seed)."""
        if not self.is_random:
            return {
                "kind": "checkpoint",
                "spec": self.spec,
                "path": str(self.path),
                "fingerprint": fingerprint(self.path),
            }
        out = dict(kind="random", spec=self.spec, random_weights_seed=self.random_seed)
        out.update(shape_from=self.spec[len(RANDOM_PREFIX) :], overrides=self.overrides, path=str(self.path))
        return out | {"note": "random weights: speed is meaningful, ROUGE is not"}


def random_config(name: str, layers: Optional[int] = None) -> dict:
    file = ASSETS / "t5-configs" / f"{name}.json"
    if not file.exists():
        raise ConfigError(f"unknown random model {name!r}; known shapes: {', '.join(random_model_names())}")
    cfg = json.loads(file.read_text())
    if layers is not None:
        cfg["num_layers"] = cfg["num_decoder_layers"] = int(layers)
    return cfg


def prepare_source(spec: str, cache_dir=None, layers: Optional[int] = None, seed: int = 0, shared_std=0.05):
    """A model spec as a local multi-head checkpoint directory (a random one built on first use, its shared
    embedding with a small std so that greedy decoding gives varied tokens, not one echoed)."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir else paths.cache_dir()
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX) :]
        cfg = random_config(name, layers)
        overrides = {} if layers is None else {"num_layers": layers, "num_decoder_layers": layers}
        tag = f"{name}-L{cfg['num_layers']}x{cfg['num_decoder_layers']}-seed{seed}-std{shared_std:g}"
        out = cache_dir / "random" / tag
        if not (out / "config.json").exists():
            from transformers import AutoTokenizer

            from ..checkpoint.random_init import save_random_checkpoint

            tok = AutoTokenizer.from_pretrained(str(ASSETS / "tokenizer"))
            try:
                with atomic_directory(out) as tmp:
                    save_random_checkpoint(cfg, tmp, seed=seed, tokenizer=tok, shared_std=shared_std)
            except CheckpointError:
                if not (out / "config.json").exists():  # not a concurrent build that finished first
                    raise
        extra = dict(overrides, shared_std=shared_std)
        return ModelSource(spec, out, read_config(out), random_seed=seed, overrides=extra)
    if layers is not None:
        raise ConfigError("--layers only applies to random:<name> models")
    path = resolve(spec)
    cfg = read_config(path)
    if "conversion" in cfg:
        raise ConfigError(
            f"{spec} is already a converted MLX model; pass the multi-head Hugging Face checkpoint "
            f"it came from ({cfg['conversion'].get('source')})"
        )
    if "num_heads" not in cfg:
        raise ConfigError(f"{path}/config.json is not a T5 config")
    return ModelSource(spec, path, cfg, random_seed=cfg.get("random_weights_seed"))


def fingerprint(path: Path) -> str:
    """Short hash of a checkpoint directory: its config and the names, sizes and times of its weight files."""
    path = Path(path)
    h = hashlib.sha1()
    h.update(str(path.resolve()).encode())
    cfg = path / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def parse_kv_heads(text: Optional[str], num_heads: int) -> List[int]:
    """'H,4,1' -> [H, 4, 1]; 'H' (or 'mha') means num_heads, 'mqa' means 1. Default: H, ~H/3, 1."""
    if text is None or str(text).strip() in ("", "default"):
        return default_kv_heads(num_heads)
    out: List[int] = []
    for part in _items(text, "--kv-heads lists no value"):
        try:
            g = {"h": num_heads, "mha": num_heads, "mqa": 1}[part] if part in ("h", "mha", "mqa") else int(part)
        except ValueError:
            raise ConfigError(f"--kv-heads: {part!r} is not a number (or H / mha / mqa)") from None
        check_kv_heads(g, num_heads, "--kv-heads")
        out += [] if g in out else [g]
    return sorted(out, reverse=True)


def _items(text, empty: str) -> List[str]:
    """A comma list's items, stripped and lower-cased, in order without repeats; ConfigError(`empty`) if none."""
    out = list(dict.fromkeys(p.strip().lower() for p in str(text).split(",") if p.strip()))
    if not out:
        raise ConfigError(empty)
    return out


def default_kv_heads(num_heads: int) -> List[int]:
    """MHA, one GQA (the divisor nearest H/3: 12 -> 4, 16 -> 4, 8 -> 2) and MQA."""
    mids = [g for g in valid_kv_heads(num_heads) if 1 < g < num_heads]
    out = [num_heads]
    if mids:
        out.append(min(mids, key=lambda g: (abs(g - num_heads / 3), g)))
    if num_heads > 1:
        out.append(1)
    return out


DEFAULT_POOL, DEFAULT_GROUPING = "mean", "contiguous"


def parse_pools(text: Optional[str]) -> List[str]:
    """'mean,fit,svd' -> ['mean', 'fit', 'svd'] (in the order given, repeats dropped). Default: mean."""
    out = _items(text or DEFAULT_POOL, "--pool lists no method")
    for p in out:
        if p not in METHODS:
            raise ConfigError(f"unknown --pool {p!r}; choose from {', '.join(METHODS)}")
    return out


def check_methods(pools: Sequence[str], grouping: str) -> None:
    """Every pool with the grouping, before any work (the head counts are checked with the model)."""
    for pool in pools:
        check_options(1, 1, pool, "decoder", grouping)


def method_label(pool: str = DEFAULT_POOL, grouping: str = DEFAULT_GROUPING) -> str:
    """'' for the paper's conversion (mean, contiguous), else 'fit', 'svd-q similar', 'mean similar'."""
    if (pool, grouping) == (DEFAULT_POOL, DEFAULT_GROUPING):
        return ""
    return pool + ("" if grouping == DEFAULT_GROUPING else f" {grouping}")


def variant_name(kv_heads: int, num_heads: int, quantize_bits=None, pool=DEFAULT_POOL, grouping=DEFAULT_GROUPING):
    """MHA, GQA-2, MQA, GQA-2-q8 (mean pooling, contiguous groups); GQA-2 fit, MQA-q8 svd-q similar otherwise.
    The multi-head variant has no method: pooling does nothing there."""
    base = "MHA" if kv_heads == num_heads else "MQA" if kv_heads == 1 else f"GQA-{kv_heads}"
    base += f"-q{quantize_bits}" if quantize_bits else ""
    method = "" if kv_heads == num_heads else method_label(pool, grouping)
    return f"{base} {method}" if method else base


@dataclass(frozen=True)
class VariantSpec:
    kv_heads: int
    num_heads: int
    quantize_bits: Optional[int] = None
    q_group_size: int = 64
    pool: str = DEFAULT_POOL
    grouping: str = DEFAULT_GROUPING

    @property
    def name(self) -> str:
        return variant_name(self.kv_heads, self.num_heads, self.quantize_bits, self.pool, self.grouping)

    @property
    def is_mean_contiguous(self) -> bool:
        """Converted as the paper does: the PyTorch group-mean reference applies to it."""
        return (self.pool, self.grouping) == (DEFAULT_POOL, DEFAULT_GROUPING)

    @property
    def calibrated(self) -> bool:
        return needs_calibration(self.pool, self.grouping)


def variant_specs(
    kv_heads, num_heads: int, quantize=(), q_group_size=64, pools=(DEFAULT_POOL,), grouping=DEFAULT_GROUPING
):
    """Every kv-heads value in float (each pool in turn; the multi-head variant once, mean-pooled), then its
    quantized copies. Every combination is checked before any is converted."""
    specs = []
    for bits in [None, *quantize]:
        for g in kv_heads:
            for pool in [DEFAULT_POOL] if g == num_heads else pools:
                how = DEFAULT_GROUPING if g == num_heads else grouping
                check_options(g, num_heads, pool, "decoder", how)
                b = int(bits) if bits else None
                specs.append(VariantSpec(g, num_heads, b, q_group_size if b else 64, pool, how))
    return specs


def timed_pool(pools: Sequence[str]) -> str:
    """The pool whose variants the speed sweep times: mean when listed, else the first one. The other
    methods convert to the shapes of mean pooling, so their speed is that of the timed ones."""
    return DEFAULT_POOL if DEFAULT_POOL in pools else pools[0]


def represents_speed(spec: VariantSpec, pools: Sequence[str]) -> bool:
    """Whether `spec` is timed for its shape: MHA and the variants of the timed pool (`timed_pool`)."""
    return spec.kv_heads == spec.num_heads or spec.pool == timed_pool(pools)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "model"


def calibration_tag(cal: Calibration) -> str:
    """Short hash of the calibration settings (a local source also by its modification time)."""
    where = Path(cal.source).expanduser()
    local = cal.source != BUNDLED and not cal.source.startswith("hf:") and where.exists()
    stamp = where.stat().st_mtime_ns if local else ""
    text = f"{cal.source}|{stamp}|{cal.samples}|{cal.max_input}|{cal.max_target}|{cal.prefix}"
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def converted_path(source: ModelSource, spec: VariantSpec, dtype: str, cache_dir=None, calibration=None) -> Path:
    """A conversion's cache directory: `kv2-float32-v1` for mean pooling in contiguous groups (as before methods
    were compared), e.g. `kv2-float32-fit-similar-cal<hash>-v1` for the others."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir else paths.cache_dir()
    q = f"-q{spec.quantize_bits}g{spec.q_group_size}" if spec.quantize_bits else ""
    method = "" if spec.is_mean_contiguous else f"-{spec.pool}"
    method += "" if spec.grouping == DEFAULT_GROUPING else f"-{spec.grouping}"
    if spec.calibrated:
        method += f"-cal{calibration_tag(calibration or Calibration())}"
    name = f"kv{spec.kv_heads}-{dtype}{q}{method}-v{CACHE_VERSION}"
    return cache_dir / "converted" / f"{_slug(source.spec)}-{fingerprint(source.path)}" / name


def ensure_converted(
    source: ModelSource, spec: VariantSpec, dtype: str, cache_dir=None, calibration=None, progress=None, bar=None
):
    """The converted model directory of `spec`, converted on first use (calibrated methods with `calibration`,
    default the bundled samples; `progress` and `bar` report a calibrated conversion's steps)."""
    out = converted_path(source, spec, dtype, cache_dir, calibration)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    try:
        method = dict(kv_heads=spec.kv_heads, pool=spec.pool, grouping=spec.grouping, calibration=calibration)
        quant = dict(
            quantize=spec.quantize_bits is not None, q_bits=spec.quantize_bits or 4, q_group_size=spec.q_group_size
        )
        convert(str(source.path), str(out), dtype=dtype, progress=progress, bar=bar, **method, **quant)
    except CheckpointError:
        if not (out / "config.json").exists():  # a concurrent conversion may have finished first
            raise
    return out
