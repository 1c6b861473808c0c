# Local stand-ins for the public images docker-compose.yml pulls (redis, nginx, prom/prometheus),
# built from Debian's own packages on the local base, for machines with no container registry.
# Only deploy/local/compose.standins.yml (the test's override) builds them; users pull the real ones.
#   docker build -f deploy/local/standins.Dockerfile --target redis --build-arg BASE_IMAGE=... deploy/local
# The three share one package layer: one apt transaction on a cold build instead of three, and one
# copy on disk.
ARG BASE_IMAGE=radixfair-local/python:3.11-bookworm

FROM ${BASE_IMAGE} AS packages
# wget: the compose health check of nginx fetches /healthz with it, as on the alpine image.
# nginx reads the rewritten compose config (nginx-entrypoint.sh) instead of conf.d.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server nginx wget prometheus \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && sed -i 's#include /etc/nginx/conf.d/\*.conf;#include /run/nginx-radixfair/*.conf;#' /etc/nginx/nginx.conf \
    && ln -sf /dev/stderr /var/log/nginx/error.log \
    && mkdir -p /prometheus
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint
COPY nginx-entrypoint.sh /usr/local/bin/nginx-entrypoint

FROM packages AS redis
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]

FROM packages AS nginx
EXPOSE 50051 8081
ENTRYPOINT ["/usr/local/bin/nginx-entrypoint"]

FROM packages AS prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml"]
