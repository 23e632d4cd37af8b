#!/bin/sh
# Refuse to start while a secret is missing or still a placeholder from .env.example, then run the image's command.
#   REQUIRED_SECRETS="VAR1 VAR2" [WAIT_FOR_FILES="/path ..."] [OWNED_DIRS="user:/dir ..."] check-secrets.sh COMMAND [ARGS...]
# WAIT_FOR_FILES: wait until each file exists (e.g. a token another service writes on its first start).
# OWNED_DIRS: when run as root, make each folder (a fresh named volume is root's) and give it to that user.
set -eu
bad=0
for var in ${REQUIRED_SECRETS:-}; do
  eval "value=\${$var:-}"
  case "$value" in
    "")
      echo "refusing to start: $var is not set. Set it in compose/.env (e.g. to the output of: openssl rand -hex 24)." >&2
      bad=1 ;;
    change-me*)
      echo "refusing to start: $var is still the placeholder '$value' from .env.example. Set it in compose/.env to a secret of your own (e.g. the output of: openssl rand -hex 24), then run docker compose up -d again." >&2
      bad=1 ;;
  esac
done
[ "$bad" = 0 ] || exit 78
if [ "$(id -u)" = 0 ]; then
  for spec in ${OWNED_DIRS:-}; do
    mkdir -p "${spec#*:}"
    chown "${spec%%:*}" "${spec#*:}"
  done
fi
for f in ${WAIT_FOR_FILES:-}; do
  n=0
  while [ ! -s "$f" ]; do
    n=$((n + 1))
    [ "$n" -le "${WAIT_SECONDS:-180}" ] || { echo "refusing to start: $f did not appear (see the influxdb logs)" >&2; exit 78; }
    sleep 1
  done
done
exec "$@"
