#!/usr/bin/env bash
# Makes the env file docker-compose.yml reads, with a fresh secret for every secret it needs.
#
# usage: deploy/compose/make-env.sh [ENV_FILE]        (default: .env in the repo root)
#
# - ENV_FILE missing: it is copied from .env.example (then replace the example API keys in it);
# - IDENTITY_SECRET and REGISTRATION_TOKEN missing or empty in it: each gets 32 random bytes (hex).
#   IDENTITY_SECRET is what the routers sign each tenant's identity with and the workers check
#   (router forward.identity_secret, worker identity_secret): a worker answers UNAUTHENTICATED to a
#   Generate no router signed. REGISTRATION_TOKEN is what RegisterWorker asks of a worker
#   (router registry.registration_token; a worker's router_token).
# A secret already set is never changed, so running it again is safe. Compose refuses to start
# while either is empty (docker-compose.yml names this script).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ENV_FILE="${1:-$ROOT/.env}"
SECRETS=(IDENTITY_SECRET REGISTRATION_TOKEN)

random_hex() {
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

if [ ! -e "$ENV_FILE" ]; then
  cp "$ROOT/.env.example" "$ENV_FILE"
  echo "make-env: wrote $ENV_FILE from .env.example; replace its example API keys" >&2
fi
# Only the owner reads a file of secrets.
chmod 600 "$ENV_FILE"
for name in "${SECRETS[@]}"; do
  if grep -Eq "^${name}=.+" "$ENV_FILE"; then
    continue
  fi
  value="$(random_hex)"
  if grep -Eq "^${name}=" "$ENV_FILE"; then
    sed -i "s/^${name}=.*/${name}=${value}/" "$ENV_FILE"
  else
    # A file without a final newline would join the new line to its last one.
    [ -z "$(tail -c 1 "$ENV_FILE")" ] || echo >>"$ENV_FILE"
    echo "${name}=${value}" >>"$ENV_FILE"
  fi
  echo "make-env: generated $name in $ENV_FILE" >&2
done
