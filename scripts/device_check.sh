#!/usr/bin/env bash
# On an NVIDIA machine WITHOUT internet: install mlx[cuda] from a folder of wheels carried there (made by
# scripts/device_wheels.sh), run the portable-path tests on the GPU and the benchmark beside PyTorch CUDA.
# Results go under $OUT (or --out).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/device_check.sh [options]

On an NVIDIA machine without internet, from the repository root:
  1. join the wheels split into parts (NAME.part-aaa, ...), check SHA256SUMS, and install requirements.txt of the
     wheel folder (mlx[cuda], mlx-mqa's dependencies, pytest) into a fresh venv, with pip --no-index;
  2. check that MLX sees the GPU (mx.cuda.is_available());
  3. run the portable-path tests on the GPU:
       MLX_MQA_ENGINE=portable python -m pytest -q tests/models/test_portable.py
  4. run the README's offline example (random checkpoint, convert to GQA-2, generate);
  5. run the benchmark beside PyTorch on CUDA (python bench.py --torch-device cuda ...; --no-torch when the venv
     has no torch that sees the GPU).
mlx-mqa itself runs from this checkout (PYTHONPATH), so nothing needs building.

Options:
  --wheels DIR              the folder made by scripts/device_wheels.sh (default: shared/device-wheels if it
                            exists, else device-wheels)
  --out DIR                 results (default: $OUT if set, else results/device-check-YYYYmmdd-HHMMSS)
  --python PY               the Python to make the venv with (default: python3); its version must be the one the
                            wheels were downloaded for
  --venv DIR                where to make the venv (default: a new temporary directory); an existing venv there
                            is reused (the wheels are installed into it)
  --system-site-packages    let a new venv see the system's packages (e.g. a preinstalled CUDA torch)
  --allow-cpu               go on when MLX sees no GPU (a dry run of this script on a machine without one)
  --bench-args "ARGS"       the benchmark's arguments instead of the default:
                            --model random:t5-base --kv-heads 12,4,1 --batch-sizes 1,8,32 --lengths 512x128
                            --warmup 1 --repeats 3 --no-quality
  --no-tests | --no-example | --no-bench   skip that step
  --step-timeout SECONDS    stop a step that runs longer (default: 1200)
  -h, --help                this help

Writes under the output folder: nvidia-smi.txt, install.txt, device.txt, pytest-portable.txt (+ .xml),
example.txt, bench/ (results.json, speed.csv, ...), bench.txt and summary.txt (each step's exit status).
Exit status: 0 if every step that ran passed, 1 otherwise, 2 for bad options or a missing wheel folder.
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wheels=
out=${OUT:-}
python=python3
venv=
venv_args=()
allow_cpu=0
bench_args="--model random:t5-base --kv-heads 12,4,1 --batch-sizes 1,8,32 --lengths 512x128 --warmup 1 --repeats 3 --no-quality"
do_tests=1
do_example=1
do_bench=1
step_timeout=1200

while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) wheels=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --system-site-packages) venv_args=(--system-site-packages); shift ;;
    --allow-cpu) allow_cpu=1; shift ;;
    --bench-args) bench_args=$2; shift 2 ;;
    --no-tests) do_tests=0; shift ;;
    --no-example) do_example=0; shift ;;
    --no-bench) do_bench=0; shift ;;
    --step-timeout) step_timeout=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$repo"
if [[ -z $wheels ]]; then
  if [[ -d shared/device-wheels ]]; then wheels=shared/device-wheels; else wheels=device-wheels; fi
fi
if [[ ! -f $wheels/requirements.txt ]]; then
  echo "error: $wheels/requirements.txt not found: make the folder with scripts/device_wheels.sh (see --help)" >&2
  exit 2
fi
[[ $step_timeout =~ ^[0-9]+$ ]] || { echo "error: --step-timeout takes seconds, got $step_timeout" >&2; exit 2; }
out=${out:-results/device-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/mlx-mqa-device.XXXXXX")
venv=${venv:-$scratch/venv}

status=0
summary=()
record() { # record NAME RC
  summary+=("$1: $([[ $2 -eq 0 ]] && echo ok || echo "failed (exit $2)")")
  [[ $2 -eq 0 ]] || status=1
}
finish() {
  printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
  echo "results in $out"
  exit "$status"
}

# 0. The machine.
{ nvidia-smi || echo "nvidia-smi: not available"; } >"$out/nvidia-smi.txt" 2>&1

# 1. Join the split wheels into the scratch folder, check them, install into a fresh venv (no network).
wheel_dir=$scratch/wheels
mkdir -p "$wheel_dir"
# (set -e does not act inside a function called before ||, hence the explicit `|| return`.)
install() {
  local f name
  for f in "$wheels"/*; do
    name=$(basename "$f")
    case "$name" in
      *.part-aaa) cat "${f%.part-aaa}".part-* >"$wheel_dir/${name%.part-aaa}" || return ;;
      *.part-*) ;;
      *) ln -s "$(cd "$(dirname "$f")" && pwd)/$name" "$wheel_dir/$name" || return ;;
    esac
  done
  if [[ -f $wheel_dir/SHA256SUMS ]]; then
    (cd "$wheel_dir" && sha256sum --check --quiet SHA256SUMS) || return
  fi
  if [[ ! -x $venv/bin/python ]]; then "$python" -m venv "${venv_args[@]}" "$venv" || return; fi
  PIP_NO_INDEX=1 "$venv/bin/python" -m pip install --no-index --find-links "$wheel_dir" \
    -r "$wheel_dir/requirements.txt" || return
  "$venv/bin/python" -m pip list
}
rc=0
install >"$out/install.txt" 2>&1 || rc=$?
record install "$rc"
if [[ $rc -ne 0 ]]; then
  tail -n 20 "$out/install.txt" >&2
  finish
fi
py=$venv/bin/python
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# 2. Does MLX see the GPU? (import mlx_mqa first: on Linux it sets up its BLAS before mlx.core loads.)
rc=0
timeout "$step_timeout" "$py" - >"$out/device.txt" 2>&1 <<'EOF' || rc=$?
import platform, sys
import mlx_mqa
import mlx.core as mx
print("python", sys.version.split()[0], platform.platform())
print("mlx", mx.__version__, "mlx_mqa", mlx_mqa.__version__)
print("default device", mx.default_device(), "cuda available", mx.cuda.is_available())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError:
    print("torch: not installed")
sys.exit(0 if mx.cuda.is_available() else 1)
EOF
record "mlx sees the GPU" "$rc"
cat "$out/device.txt"
if [[ $rc -ne 0 && $allow_cpu -eq 0 ]]; then finish; fi

# 3. The portable path (MLX's fused attention, compiled decode steps) on the GPU.
if [[ $do_tests -eq 1 ]]; then
  rc=0
  MLX_MQA_ENGINE=portable timeout "$step_timeout" "$py" -m pytest -q tests/models/test_portable.py \
    --junitxml "$out/pytest-portable.xml" >"$out/pytest-portable.txt" 2>&1 || rc=$?
  record "portable tests" "$rc"
  tail -n 5 "$out/pytest-portable.txt"
fi

# 4. The README's worked example, in a scratch directory.
if [[ $do_example -eq 1 ]]; then
  rc=0
  (
    set -x
    cd "$scratch" &&
      timeout "$step_timeout" "$py" -m mlx_mqa.random_checkpoint --config flan-t5-small --out flan-small &&
      timeout "$step_timeout" "$py" -m mlx_mqa.convert --hf-path flan-small --mlx-path flan-small-gqa2 --kv-heads 2 &&
      timeout "$step_timeout" "$py" -m mlx_mqa.generate --model flan-small-gqa2 -m 20 \
        --prompt "summarize: The tower is 324 metres tall, about the same height as an 81-storey building."
  ) >"$out/example.txt" 2>&1 || rc=$?
  record "worked example" "$rc"
fi

# 5. The benchmark beside PyTorch on CUDA.
if [[ $do_bench -eq 1 ]]; then
  torch_args=(--no-torch)
  if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    torch_args=(--torch-device cuda)
  fi
  read -r -a extra <<<"$bench_args"
  rc=0
  timeout "$step_timeout" "$py" bench.py "${extra[@]}" "${torch_args[@]}" --no-progress --out "$out/bench" \
    --cache-dir "$scratch/cache" >"$out/bench.txt" 2>&1 || rc=$?
  record "bench (${torch_args[*]})" "$rc"
  tail -n 30 "$out/bench.txt"
fi

finish
