#!/usr/bin/env bash
# Prepares a container engine and a local base image, so docker-compose.yml builds and runs on a
# machine that has no container registry (CI, the project's machines). Idempotent: each step
# checks first and does nothing when it is already done.
#
# usage: scripts/container_engine.sh [STEP...]      (no step: all of them, in this order)
#   engine   a Docker engine that answers: Debian's docker.io is installed (apt, root) when
#            dockerd is missing, and dockerd is started in the background when none answers
#   base     the base image the Dockerfiles build on, $BASE_IMAGE: Debian bookworm made with
#            debootstrap --variant=minbase (Python 3.11, pip, venv) and `docker import`ed
#   inputs   the optional build inputs in deploy/docker/build-inputs/: this machine's CA bundle
#            (for pip behind a TLS-inspecting proxy) and the CPU torch wheel from the local
#            wheelhouse (so the CPU image never downloads the multi-GB CUDA build)
#   cli-dir  prints a directory whose `docker` builds with BuildKit (put it first on PATH for
#            compose); exits 1 when there is none
#
# Users with a registry need none of this: the Dockerfiles' pinned FROM (python:*-slim-bookworm)
# pulls as usual. Here compose gets PYTHON_IMAGE=$BASE_IMAGE (tests/deploy/test_compose_stack.py).
# Exit status 3: no engine can be had here (not root, or no apt-get); the message says why.
#
# environment:
#   BASE_IMAGE   tag of the local base (default radixfair-local/python:3.11-bookworm)
#   WHEELHOUSE   directory holding the torch CPU wheel (default: pip's configured find-links)
#   EXTRA_CA_BUNDLE  CA bundle the builds trust (default /etc/ssl/certs/ca-certificates.crt)
#   DEBIAN_MIRROR    mirror for debootstrap (default http://deb.debian.org/debian)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${BASE_IMAGE:-radixfair-local/python:3.11-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
EXTRA_CA_BUNDLE="${EXTRA_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
INPUTS="$ROOT/deploy/docker/build-inputs"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/radixfair-dockerd.log}"
# The engine's own client: Debian's docker.io ships one that builds with BuildKit without the
# buildx plugin (a newer client without buildx only has the legacy builder, which cannot run the
# Dockerfiles' RUN --mount).
ENGINE_CLI=/usr/bin/docker

say() { echo "container_engine: $*" >&2; }

cannot() {
  say "$*"
  exit 3
}

apt_install() {
  [ "$(id -u)" = 0 ] || cannot "cannot install $* here: not root"
  command -v apt-get >/dev/null || cannot "cannot install $* here: no apt-get"
  say "installing $* (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

docker_cli() {
  if [ -x "$ENGINE_CLI" ]; then echo "$ENGINE_CLI"; else command -v docker; fi
}

engine_answers() {
  "$(docker_cli)" info >/dev/null 2>&1
}

step_engine() {
  if command -v docker >/dev/null && engine_answers; then
    return
  fi
  if ! command -v dockerd >/dev/null || [ ! -x "$ENGINE_CLI" ]; then
    apt_install docker.io
  fi
  if ! engine_answers; then
    say "starting dockerd (log: $DOCKERD_LOG)"
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    # Bounded: dockerd answers within seconds; a minute means it failed (see its log).
    for _ in $(seq 1 60); do
      engine_answers && break
      sleep 1
    done
    engine_answers || cannot "dockerd did not answer within 60 s; its log: $DOCKERD_LOG"
  fi
}

step_base() {
  local docker
  docker="$(docker_cli)"
  if "$docker" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return
  fi
  command -v debootstrap >/dev/null || apt_install debootstrap
  local rootfs
  rootfs="$(mktemp -d /var/tmp/radixfair-base.XXXXXX)"
  # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
  trap "umount '$rootfs/proc' '$rootfs/sys' 2>/dev/null || true; rm -rf --one-file-system '$rootfs'" EXIT
  say "debootstrap bookworm (minbase + Python 3.11) into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; cannot "debootstrap failed"; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # An imported image has no environment at all; give it the PATH and locale of the python images.
  tar -C "$rootfs" --numeric-owner --one-file-system -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >/dev/null
  say "base image $BASE_IMAGE ready"
}

wheelhouse() {
  if [ -n "${WHEELHOUSE:-}" ]; then
    echo "$WHEELHOUSE"
  else
    python3 -m pip config get global.find-links 2>/dev/null || echo "${PIP_FIND_LINKS:-}"
  fi
}

step_inputs() {
  mkdir -p "$INPUTS/wheels"
  if [ -f "$EXTRA_CA_BUNDLE" ] && ! cmp -s "$EXTRA_CA_BUNDLE" "$INPUTS/ca-certificates.crt"; then
    cp "$EXTRA_CA_BUNDLE" "$INPUTS/ca-certificates.crt"
  fi
  local dir wheel found=0
  for dir in $(wheelhouse); do
    for wheel in "$dir"/torch-*+cpu-cp311-*.whl; do
      [ -f "$wheel" ] || continue
      found=1
      if [ ! -f "$INPUTS/wheels/$(basename "$wheel")" ]; then
        # A hard link costs no space; across file systems, a copy.
        ln "$wheel" "$INPUTS/wheels/" 2>/dev/null || cp "$wheel" "$INPUTS/wheels/"
      fi
    done
  done
  if [ "$found" = 0 ]; then
    say "no torch CPU wheel for Python 3.11 in '$(wheelhouse)': the CPU worker build will ask the index"
  fi
}

step_cli_dir() {
  if [ -x "$ENGINE_CLI" ]; then
    dirname "$ENGINE_CLI"
  elif command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then
    dirname "$(command -v docker)"
  else
    say "no docker client that builds with BuildKit"
    exit 1
  fi
}

steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(engine base inputs)
for step in "${steps[@]}"; do
  case "$step" in
    engine | base | inputs) "step_$step" ;;
    cli-dir) step_cli_dir ;;
    *) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
