#!/usr/bin/env bash
# Every GPU measurement of the benchmark (python -m benchmarks --gpu-plan), for a GPU machine that is lent for
# minutes: run it there from the repo root. It unpacks .whl/<set>.tar.xz (scripts/gpu_wheels.sh, made on the
# CPU machine) when the packages are missing, and writes <gpu>-<date>[-<part>].json into $OUT (the device
# tool's return folder) or benchmarks/results after every section, so a run cut off keeps what it measured.
#   bash scripts/gpu_bench.sh run      speedups + methods on gpt2-medium (one run's speed, MFU before/after,
#                                      peak / predicted memory): about 9 minutes on an H200 (estimated)
#   bash scripts/gpu_bench.sh cells    cells per hour at 1, 2, 4 cells per GPU (Ray) on gpt2: about 5 minutes (estimated)
# Further arguments go to python -m benchmarks (e.g. --sections speedups --reps 2).
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-run}; shift || true
case "$part" in
  run) wheels=core; sections=speedups,methods ;;
  cells) wheels=ray; sections=launchers ;;
  *) echo "usage: bash scripts/gpu_bench.sh run|cells [benchmark options]" >&2; exit 2 ;;
esac
PY=${PY:-python3}
# The packages are there already (this machine, or an earlier call of the same lease): nothing to unpack.
have='import hydra, pydantic, peft, transformers; from packaging.version import Version as V
assert V(transformers.__version__) >= V("5.20")'
[ "$wheels" = ray ] && have="$have
import ray, hydra_plugins.hydra_ray_launcher"
if ! "$PY" -c "$have" 2>/dev/null; then
  site=/tmp/tunegrid-site-$wheels
  mkdir -p "$site" && tar -C "$site" -xJf ".whl/$wheels.tar.xz" || { echo "no .whl/$wheels.tar.xz: run scripts/gpu_wheels.sh $wheels here first" >&2; exit 2; }
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
out=${OUT:-benchmarks/results}
suffix=$([ "$part" = cells ] && echo cells || true)
exec "$PY" -m benchmarks --gpu-plan --sections "$sections" --out-dir "$out" ${suffix:+--suffix "$suffix"} "$@"
