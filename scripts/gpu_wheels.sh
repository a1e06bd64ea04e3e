#!/usr/bin/env bash
# The Python packages the GPU machine of the device tool lacks (its image: Python 3.12, CUDA torch, transformers
# 5.17; nothing can be fetched there), as one xz archive of an installed tree, .whl/<set>.tar.xz (git-ignored),
# at the versions installed here, so that the GPU runs what CI tests. A device call carries at most 64 MiB:
#   core  what `python -m src.run` imports, with bitsandbytes (QLoRA) and liger-kernel: speedups, methods
#   ray   core without those two, plus Ray (its Java jar left out) and the Hydra Ray launcher: cells per GPU
# scripts/gpu_bench.sh unpacks it there. Usage: scripts/gpu_wheels.sh core|ray
set -euo pipefail
cd "$(dirname "$0")/.."
set_name=${1:?usage: scripts/gpu_wheels.sh core|ray}
PY=${PY:-.venv/bin/python}
base=(transformers peft datasets dill multiprocess hydra-core omegaconf pydantic pydantic_core annotated-types
      typing-inspection httpx2 httpcore2 truststore)
case "$set_name" in
  core) names=("${base[@]}" bitsandbytes liger_kernel) ;;
  # Ray, with what `ray[default]` (the launcher's) and the Hydra plugin import that the image lacks.
  ray) names=("${base[@]}" ray hydra-ray-launcher jsonschema jsonschema-specifications referencing rpds-py
              google-api-core google-auth googleapis-common-protos proto-plus pyasn1 pyasn1_modules aiohttp-cors
              colorful opencensus opencensus-context py-spy smart_open virtualenv distlib platformdirs
              python-discovery) ;;
  *) echo "unknown set $set_name: core or ray" >&2; exit 2 ;;
esac
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
mapfile -t pins < <("$PY" -m pip list --format=freeze 2>/dev/null | grep -i -E "^($(IFS='|'; echo "${names[*]}"))==")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$work/wheels" "${pins[@]}"
"$PY" -m pip wheel -q --no-deps -w "$work/wheels" antlr4-python3-runtime==4.9.3  # hydra's parser: sdist only
mkdir -p "$work/site"
for w in "$work"/wheels/*.whl; do (cd "$work/site" && unzip -qqo "$w" -x 'ray/jars/*' 2>/dev/null || [ $? -eq 11 ]); done
mkdir -p .whl && tar -C "$work/site" -cf - . | xz -T0 -6 > ".whl/$set_name.tar.xz"
ls -la ".whl/$set_name.tar.xz"
