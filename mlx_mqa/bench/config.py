"""What one benchmark run does: every setting of `python -m mlx_mqa.bench`, as the CLI resolved it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple


@dataclass
class BenchConfig:
    model: str = "random:t5-small"
    layers: Optional[int] = None
    seed: int = 0
    kv_heads: Optional[str] = None
    quantize: Sequence[int] = ()
    q_group_size: int = 64
    pool: Sequence[str] = ("mean",)  # conversion methods compared (mlx_mqa.conversion.METHODS)
    grouping: str = "contiguous"  # contiguous | similar, for every pool
    calibration: str = "bundled"  # calibration data of fit / svd / svd-q and --grouping similar
    calibration_samples: int = 128
    calibration_lengths: Tuple[int, int] = (512, 128)
    dtype: Optional[str] = None
    torch: bool = True
    torch_device: str = "auto"
    torch_quality: str = "all"  # all: a reference per kv-heads value; mha: only the multi-head one; none
    batch_sizes: Sequence[int] = (1, 4)
    lengths: Sequence[Tuple[int, int]] = ((512, 64),)
    warmup: int = 1
    repeats: int = 3
    speed: bool = True
    quality: bool = True
    datasets: Sequence[str] = ("bundled:cnn_dailymail",)
    data_files: Sequence[str] = ()
    split: str = "test"
    limit: Optional[int] = 6
    prefix: str = "summarize: "
    quality_lengths: Optional[Tuple[int, int]] = None  # None: each dataset's paper setting
    quality_batch_size: int = 8
    num_beams: Sequence[int] = (1,)  # quality runs once per beam width (1 = greedy)
    bootstrap: int = 1000
    memory_budget: Optional[int] = None  # bytes: find each variant's largest batch that fits (bench.budget)
    decode_path: str = "auto"  # auto: the library's default step (bench.speed.DECODE_PATHS), or compiled / eager
    out: str = "results/bench"
    cache_dir: Optional[str] = None
    plots: bool = True
    progress: bool = True
    command: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lengths"] = [f"{i}x{o}" for i, o in self.lengths]
        d["quality_lengths"] = f"{self.quality_lengths[0]}x{self.quality_lengths[1]}" if self.quality_lengths else None
        d["batch_sizes"] = list(self.batch_sizes)
        d["quantize"] = list(self.quantize)
        d["pool"] = list(self.pool)
        d["calibration_lengths"] = "{}x{}".format(*self.calibration_lengths)
        d["num_beams"] = list(self.num_beams)
        d["datasets"] = list(self.datasets)
        d["data_files"] = list(self.data_files)
        return d
