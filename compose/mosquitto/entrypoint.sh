#!/bin/sh
# Write the hashed password file from the environment, then run mosquitto.
set -eu
: "${MQTT_EDGESIEVE_PASSWORD:?set MQTT_EDGESIEVE_PASSWORD in .env}"
: "${MQTT_DEVICES_PASSWORD:?set MQTT_DEVICES_PASSWORD in .env}"
umask 077
rm -f /mosquitto/data/passwd
touch /mosquitto/data/passwd
mosquitto_passwd -b /mosquitto/data/passwd edgesieve "$MQTT_EDGESIEVE_PASSWORD"
mosquitto_passwd -b /mosquitto/data/passwd devices "$MQTT_DEVICES_PASSWORD"
chown mosquitto:mosquitto /mosquitto/data/passwd
chmod 0700 /mosquitto/data/passwd
exec mosquitto -c /mosquitto/config/mosquitto.conf
