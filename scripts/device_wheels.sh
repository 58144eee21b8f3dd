#!/usr/bin/env bash
# Prepare, on a machine WITH internet, the folder of wheels that scripts/device_check.sh installs on an NVIDIA
# machine WITHOUT internet: mlx[cuda] and what mlx-mqa needs to run its tests and benchmark, for the target's
# Python and platform. Files over 64 MiB are split into 60 MiB parts (device_check.sh joins them back with cat).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/device_wheels.sh [options]

Download (pip download, binary wheels only) mlx[cuda] and mlx-mqa's runtime and test dependencies for an
offline NVIDIA machine, into a folder that scripts/device_check.sh installs from. Run it on a machine with
internet; it may be another OS or architecture (the target is given by --python-version and --platform).

Options:
  --out DIR             output folder (default: device-wheels); must be empty or absent
  --python-version X.Y  the target machine's Python (default: 3.12)
  --platform TAG        the target's platform (default: manylinux_2_35_x86_64; MLX's CUDA wheels need
                        glibc >= 2.35; older manylinux tags are accepted too). aarch64: manylinux_2_35_aarch64
  --mlx-version V       pin mlx (default: the newest)
  --cuda 12|13          MLX's CUDA package: mlx[cuda12] (driver >= 550.54.14) or mlx[cuda13] (driver >= 580)
                        (default: 12)
  --torch none|cpu|cuda PyTorch for the benchmark's reference and the tests' transformers comparisons:
                        none (default; the target's own torch is used if the venv sees it, see device_check.sh
                        --system-site-packages), cpu (~200 MB) or cuda (several GB with its NVIDIA libraries)
  --torch-index URL     index of the cuda torch wheels (default: https://download.pytorch.org/whl/cu128)
  --split-size SIZE     part size for big files, as split -b takes it (default: 60M)
  -h, --help            this help

The folder holds the wheels (big ones as NAME.part-aaa, NAME.part-aab, ...), requirements.txt (what
device_check.sh installs) and SHA256SUMS (of the whole files, checked after joining).

Example:
  scripts/device_wheels.sh --out shared/device-wheels --python-version 3.12 --torch cpu
EOF
}

out=device-wheels
pyver=3.12
platform=manylinux_2_35_x86_64
mlx_version=
cuda=12
torch=none
torch_index=https://download.pytorch.org/whl/cu128
split_size=60M
max_bytes=$((64 * 1024 * 1024))

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --python-version) pyver=$2; shift 2 ;;
    --platform) platform=$2; shift 2 ;;
    --mlx-version) mlx_version=$2; shift 2 ;;
    --cuda) cuda=$2; shift 2 ;;
    --torch) torch=$2; shift 2 ;;
    --torch-index) torch_index=$2; shift 2 ;;
    --split-size) split_size=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

[[ $pyver =~ ^3\.[0-9]+$ ]] || { echo "error: --python-version takes X.Y, e.g. 3.12, got $pyver" >&2; exit 2; }
[[ $cuda == 12 || $cuda == 13 ]] || { echo "error: --cuda takes 12 or 13, got $cuda" >&2; exit 2; }
case "$torch" in none | cpu | cuda) ;; *) echo "error: --torch takes none, cpu or cuda, got $torch" >&2; exit 2 ;; esac
if [[ -e $out ]] && [[ -n "$(ls -A "$out")" ]]; then
  echo "error: $out exists and is not empty; choose another --out" >&2
  exit 2
fi
mkdir -p "$out"

pip=(python3 -m pip)
abi="cp${pyver/./}"
arch=${platform##*_}
if [[ $platform == *x86_64 ]]; then arch=x86_64; fi
# Binary wheels for the target only; pip also accepts the older manylinux tags listed here.
target=(--only-binary=:all: --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none
  --platform "$platform" --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch"
  --platform "manylinux2014_$arch" --platform "linux_$arch")

mlx_spec="mlx[cuda$cuda]${mlx_version:+==$mlx_version}"
# mlx-mqa's dependencies (pyproject.toml) without mlx[cpu]: the CUDA package replaces it. scipy-openblas32
# serves the Linux CPU engine, which `import mlx_mqa` sets up on any Linux machine. pytest runs the tests.
cat >"$out/requirements.txt" <<EOF
$mlx_spec
mlx-lm>=0.20
scipy-openblas32
numpy
transformers>=5
tokenizers
sentencepiece
safetensors
huggingface_hub
click
tqdm
pytest
EOF

echo "downloading for Python $pyver on $platform: $(tr '\n' ' ' <"$out/requirements.txt")"
"${pip[@]}" download "${target[@]}" --dest "$out" -r "$out/requirements.txt"

case "$torch" in
  cpu)
    "${pip[@]}" download "${target[@]}" --dest "$out" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple torch
    echo torch >>"$out/requirements.txt"
    ;;
  cuda)
    "${pip[@]}" download "${target[@]}" --dest "$out" --index-url "$torch_index" \
      --extra-index-url https://pypi.org/simple torch
    echo torch >>"$out/requirements.txt"
    ;;
esac

# Checksums of the whole files, then split the big ones into NAME.part-aaa, NAME.part-aab, ... (device_check.sh
# joins them back with cat). GNU or BSD tools (a Mac): shasum where there is no sha256sum.
sha256() { if command -v sha256sum >/dev/null; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }
(cd "$out" && sha256 -- *.whl >SHA256SUMS)
n_split=0
for f in "$out"/*.whl; do
  if [[ $(wc -c <"$f") -gt $max_bytes ]]; then
    split -b "$split_size" -a 3 "$f" "$f.part-"
    rm -- "$f"
    n_split=$((n_split + 1))
  fi
done

echo "wrote $out: $(wc -l <"$out/SHA256SUMS") wheels ($n_split split into parts), $(du -sh "$out" | cut -f1)"
echo "next, on the NVIDIA machine: scripts/device_check.sh --wheels $out"
