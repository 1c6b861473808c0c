# radixfair distiller: the worker image's base, torch variant and install path, plus the distiller.
#   docker build -f deploy/docker/distiller.Dockerfile --build-arg TORCH_VARIANT=cpu -t radixfair-distiller:0.1.0-cpu .
# Its stages are the worker's (tests/deploy check that they stay identical but for the component),
# so it builds on its own, in parallel with the worker, with no image-ordering between builds.
# The install step is scripts/install_service.sh, the same script the README set-up runs.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY constraints.txt ./
COPY scripts/install_service.sh scripts/
# build-inputs/apply.sh: an optional extra CA bundle and local CPU torch wheel, mounted for the
# install only (see that script); without them the install uses the index and pip's own bundle.
# pip's cache is a BuildKit cache mount, kept by the engine between builds and never in a layer:
# a source change re-runs this step without downloading every wheel again.
# torch first, in a layer of its own: it is most of the install, and a change to radixfair's
# sources does not invalidate it (constraints.txt, the install script or the build inputs do).
RUN --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python -m venv /opt/venv \
    && PYTHON=/opt/venv/bin/python TORCH_VARIANT="${TORCH_VARIANT}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
       bash /build-inputs/apply.sh bash scripts/install_service.sh torch
COPY protos/ protos/
COPY common/ common/
COPY services/worker/ services/worker/
COPY services/distiller/ services/distiller/
# Then radixfair itself, through the very command the README set-up runs.
RUN --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PYTHON=/opt/venv/bin/python TORCH_VARIANT="${TORCH_VARIANT}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
       bash /build-inputs/apply.sh bash scripts/install_service.sh distiller

FROM ${PYTHON_IMAGE} AS distiller
RUN groupadd --system --gid 10001 radixfair \
    && useradd --system --uid 10001 --gid radixfair --home-dir /home/radixfair --create-home \
       --shell /usr/sbin/nologin radixfair \
    && mkdir -p /models /distiller \
    && chown radixfair:radixfair /models /distiller
COPY --from=build /opt/venv /opt/venv
COPY constraints.txt deploy/docker/grpc_health_check.py deploy/docker/prepare_model.py /opt/radixfair/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1
USER 10001:10001
WORKDIR /home/radixfair
# gRPC DistillerService. One-off jobs run `python -m radixfair_distiller.cli ... distill RECIPE` instead.
EXPOSE 50071
HEALTHCHECK --interval=10s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/radixfair/grpc_health_check.py", "127.0.0.1:50071"]
ENTRYPOINT ["radixfair-distiller"]
CMD ["--config", "/etc/radixfair/distiller.yaml"]
