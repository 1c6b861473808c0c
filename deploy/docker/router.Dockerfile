# radixfair router: no torch, no model weights (only the tokenizer, from the model volume).
#   docker build -f deploy/docker/router.Dockerfile -t radixfair-router:0.1.0 .
# The install step is scripts/install_service.sh, the same script the README set-up runs.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY constraints.txt ./
COPY scripts/install_service.sh scripts/
COPY protos/ protos/
COPY common/ common/
COPY services/router/ services/router/
# build-inputs/apply.sh: an optional extra CA bundle and local CPU torch wheel, mounted for the
# install only (see that script); without them the install uses the index and pip's own bundle.
# pip's cache is a BuildKit cache mount, kept by the engine between builds and never in a layer:
# a source change re-runs this step without downloading every wheel again.
RUN --mount=type=bind,source=deploy/docker/build-inputs,target=/build-inputs \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python -m venv /opt/venv \
    && PYTHON=/opt/venv/bin/python bash /build-inputs/apply.sh bash scripts/install_service.sh router

FROM ${PYTHON_IMAGE} AS router
RUN groupadd --system --gid 10001 radixfair \
    && useradd --system --uid 10001 --gid radixfair --home-dir /home/radixfair --create-home \
       --shell /usr/sbin/nologin radixfair
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/grpc_health_check.py /opt/radixfair/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/radixfair
# gRPC RouterService, the OpenAI-compatible HTTP API, Prometheus /metrics.
EXPOSE 50051 8000 9451
HEALTHCHECK --interval=10s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "/opt/radixfair/grpc_health_check.py", "127.0.0.1:50051"]
ENTRYPOINT ["radixfair-router"]
CMD ["--config", "/etc/radixfair/router.yaml"]
