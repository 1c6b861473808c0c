#!/bin/sh
# Like the official redis image: a redis-server started with no config file answers other
# containers (protected mode refuses every non-loopback client of a password-less server).
set -e
if [ "$1" = redis-server ]; then
  exec "$@" --protected-mode no
fi
exec "$@"
