#!/usr/bin/env bash
# Runs its arguments with this directory's optional build inputs applied. Each Dockerfile's install
# step bind-mounts this directory (never copied into an image) and runs the install through this.
#
#   ca-certificates.crt  a CA bundle pip trusts instead of its own (a TLS-inspecting proxy)
#   wheels/*.whl         a local wheelhouse pip searches first; CPU builds only, since it holds the
#                        CPU torch wheel that keeps the CUDA build (multi-GB) off the CPU image
#
# Both are git-ignored and absent by default: a plain build uses the index and pip's own bundle.
# scripts/container_engine.sh inputs fills them from this machine.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -s "$HERE/ca-certificates.crt" ]; then
  export PIP_CERT="$HERE/ca-certificates.crt"
fi
if [ "${TORCH_VARIANT:-cpu}" = cpu ] && compgen -G "$HERE/wheels/*.whl" >/dev/null; then
  export PIP_FIND_LINKS="$HERE/wheels"
fi
exec "$@"
