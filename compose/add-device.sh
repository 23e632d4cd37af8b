#!/bin/sh
# Add a device login (or give an existing one a new password):  ./add-device.sh DEVICE_ID
#
# The login's user name is the device id. The broker's ACL (mosquitto/acl) lets it publish only to
# sensors/<site>/DEVICE_ID/... and read only alerts/<site>/DEVICE_ID and commands/<site>/DEVICE_ID/...
# The password is printed once; only its hash is stored (mosquitto/devices.passwd). Then:
#   docker compose restart mosquitto
set -eu
cd "$(dirname "$0")"
file=${DEVICES_FILE:-mosquitto/devices.passwd}
id=${1:?usage: ./add-device.sh DEVICE_ID}
case "$id" in
  *[!A-Za-z0-9_.-]*) echo "device id '$id': use only letters, digits, '_', '.' and '-' (it is a topic level)" >&2; exit 2 ;;
  edgesieve|simulator) echo "'$id' is a reserved login, not a device" >&2; exit 2 ;;
esac
pw=${DEVICE_PASSWORD:-$(openssl rand -hex 24)}
touch "$file"
chmod 600 "$file"
if command -v mosquitto_passwd >/dev/null 2>&1; then
  mosquitto_passwd -b "$file" "$id" "$pw"
else
  dir=$(cd "$(dirname "$file")" && pwd)
  docker run --rm -v "$dir:/w" eclipse-mosquitto:2 mosquitto_passwd -b "/w/$(basename "$file")" "$id" "$pw"
fi
echo "device '$id' added to $file; its password (shown only now): $pw"
