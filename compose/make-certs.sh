#!/bin/sh
# Make the site CA and the Mosquitto server certificate for MQTT over TLS (port 8883), with openssl.
#
#   ./make-certs.sh [NAME_OR_IP ...]     default: this machine's host name, localhost and 127.0.0.1
#
# Give every name or address devices use to reach the gateway: they verify the server certificate against it.
# Writes mosquitto/certs/ca.crt (give it to devices), ca.key (keep it off the gateway once devices are set up),
# server.crt and server.key. Running it again renews the server certificate with the same CA.
set -eu
cd "$(dirname "$0")"
out=${CERTS_DIR:-mosquitto/certs}
days=${CERT_DAYS:-825}
mkdir -p "$out"
[ $# -gt 0 ] || set -- "$(hostname)" localhost 127.0.0.1
san=""
for name in "$@"; do
  case "$name" in
    *[!0-9.]*) san="$san,DNS:$name" ;;
    *) san="$san,IP:$name" ;;
  esac
done
san=${san#,}
umask 077
if [ ! -f "$out/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=edgesieve site CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
  -keyout "$out/server.key" -out "$out/server.csr" -subj "/CN=$1" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial -sha256 \
  -days "$days" -out "$out/server.crt" -extfile "$out/server.ext" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.crt"
echo "wrote $out/ca.crt, $out/server.crt and $out/server.key for $san (CA key: $out/ca.key)"
