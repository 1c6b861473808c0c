# Sourced (not run) by the GPU session scripts on the GPU machine, from the repository root, with
# $carry set to the carried folder (bench/scratch/gpu_serving, filled by gpu_serving_session.sh
# --prepare): installs the carried wheels the GPU image lacks into /tmp/site, puts the generated stubs
# in place, and exports PATH (redis-server), PYTHONPATH (every package's src) and OUT (default
# bench/results). Exits the sourcing script with 2 when the carry is missing, 1 when a wheel fails.
[ -d "$carry/whl" ] || { echo "no $carry: run 'bash bench/engine/gpu_serving_session.sh --prepare' here and carry $carry" >&2; exit 2; }
# Stubs generated from other protos than these would serve and call a different contract (a new RPC
# answered UNIMPLEMENTED on the GPU machine while every test here passed): refuse them.
if [ "$(cat protos/radixfair/v1/*.proto | sha256sum | cut -d' ' -f1)" != "$(cat "$carry/v1/PROTOS_SHA256" 2>/dev/null)" ]; then
  echo "$carry/v1 was generated from other protos: run 'bash bench/engine/gpu_serving_session.sh --prepare' here" >&2
  exit 2
fi
export OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$carry"/whl/*.whl || exit 1
cp "$carry"/v1/*.py common/src/radixfair/v1/
export PATH="$PWD/$carry/bin:$PATH" PYTHONUNBUFFERED=1
export PYTHONPATH="/tmp/site:$PWD/common/src:$PWD/model_format/src:$PWD/engine/src:$PWD/services/worker/src:$PWD/services/router/src"
