#!/usr/bin/env bash
# Runs its arguments with this directory's optional build inputs applied. Each install step of
# deploy/docker/radixfair.Dockerfile bind-mounts this directory (never copied into an image) and
# runs the install through this.
#
#   ca-certificates.crt  a CA bundle pip trusts instead of its own (a TLS-inspecting proxy)
#   wheels/*.whl         a local wheelhouse pip searches first; CPU builds only, since it holds the
#                        CPU torch wheel that keeps the CUDA build (multi-GB) off the CPU image
#   wheels/COMPLETE      the wheelhouse holds every wheel the images install: pip then never asks
#                        an index, so the builds need no network at all
#
# All are git-ignored and absent by default: a plain build uses the index and pip's own bundle.
# scripts/container_engine.sh inputs fills them from this machine.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -s "$HERE/ca-certificates.crt" ]; then
  export PIP_CERT="$HERE/ca-certificates.crt"
fi
if [ "${TORCH_VARIANT:-cpu}" = cpu ] && compgen -G "$HERE/wheels/*.whl" >/dev/null; then
  export PIP_FIND_LINKS="$HERE/wheels"
  if [ -f "$HERE/wheels/COMPLETE" ]; then
    export PIP_NO_INDEX=1
  fi
fi
exec "$@"
