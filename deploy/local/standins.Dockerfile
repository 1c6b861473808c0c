# Local stand-ins for the public images docker-compose.yml pulls (redis, nginx, prom/prometheus),
# built from Debian's own packages on the local base, for machines with no container registry.
# Only deploy/local/compose.standins.yml (the test's override) builds them; users pull the real ones.
#   docker build -f deploy/local/standins.Dockerfile --target redis --build-arg BASE_IMAGE=... deploy/local
ARG BASE_IMAGE=radixfair-local/python:3.11-bookworm

FROM ${BASE_IMAGE} AS redis
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]

FROM ${BASE_IMAGE} AS nginx
# wget: the compose health check fetches /healthz with it, as on the alpine image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx wget \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && sed -i 's#include /etc/nginx/conf.d/\*.conf;#include /run/nginx-radixfair/*.conf;#' /etc/nginx/nginx.conf \
    && ln -sf /dev/stderr /var/log/nginx/error.log
COPY nginx-entrypoint.sh /usr/local/bin/nginx-entrypoint
EXPOSE 50051 8081
ENTRYPOINT ["/usr/local/bin/nginx-entrypoint"]

FROM ${BASE_IMAGE} AS prometheus
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml"]
