#!/bin/sh
# Serves docker-compose.yml's own nginx config (mounted at /etc/nginx/conf.d/default.conf) on
# Debian bookworm's nginx 1.22, which predates two directives it uses: `http2 on;` (1.25.1; here
# `listen ... http2`) and an upstream server's `resolve` (1.27.3; here names resolve at start,
# which compose's depends_on on healthy routers makes safe). Nothing else is changed.
set -e
mkdir -p /run/nginx-radixfair
sed -e '/^[[:space:]]*http2 on;/d' \
    -e 's/^\([[:space:]]*listen 50051\);/\1 http2;/' \
    -e 's/\(server [^;]*\) resolve;/\1;/' \
    /etc/nginx/conf.d/default.conf >/run/nginx-radixfair/default.conf
exec nginx -g 'daemon off;'
