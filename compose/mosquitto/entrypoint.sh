#!/bin/sh
# Check the secrets and certificates, write the hashed password file, then run mosquitto.
#  - refuses the change-me-* placeholders of .env.example (and unset passwords), saying what to set;
#  - refuses to start without the TLS certificates (../make-certs.sh makes them);
#  - logins: edgesieve and simulator from the environment, plus every device in devices.passwd (../add-device.sh).
set -eu
dir=${MOSQUITTO_DIR:-/mosquitto}
REQUIRED_SECRETS="MQTT_EDGESIEVE_PASSWORD MQTT_SIMULATOR_PASSWORD" sh "$dir/config/check-secrets.sh" true
for f in ca.crt server.crt server.key; do
  if [ ! -f "$dir/certs/$f" ]; then
    echo "refusing to start: $dir/certs/$f is missing. Make the certificates with compose/make-certs.sh (give the names devices use to reach this gateway), then docker compose up -d again." >&2
    exit 78
  fi
done
umask 077
mkdir -p "$dir/data/tls"
cp "$dir/certs/ca.crt" "$dir/certs/server.crt" "$dir/certs/server.key" "$dir/data/tls/"
rm -f "$dir/data/passwd"
if [ -f "$dir/config/devices.passwd" ]; then grep -v '^#' "$dir/config/devices.passwd" > "$dir/data/passwd" || true; fi
touch "$dir/data/passwd"
mosquitto_passwd -b "$dir/data/passwd" edgesieve "$MQTT_EDGESIEVE_PASSWORD"
mosquitto_passwd -b "$dir/data/passwd" simulator "$MQTT_SIMULATOR_PASSWORD"
chown -R mosquitto:mosquitto "$dir/data/passwd" "$dir/data/tls" 2>/dev/null || true
chmod 0700 "$dir/data/tls"
exec mosquitto -c "$dir/config/mosquitto.conf"
