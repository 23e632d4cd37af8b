#!/bin/sh
# InfluxDB runs this once, right after its first setup (/docker-entrypoint-initdb.d): it makes the two tokens the
# stack uses instead of the all-access admin token, each written to a volume only its user mounts:
#   /tokens/grafana/read.token      read-only on the bucket (Grafana's data source)
#   /tokens/edgesieve/write.token   write-only on the bucket (edgesieve's influxdb sinks)
set -eu
org=$DOCKER_INFLUXDB_INIT_ORG
bucket_id=$(influx bucket list --org "$org" --name "$DOCKER_INFLUXDB_INIT_BUCKET" --hide-headers | cut -f1)
token() {  # $1: description, $2: --read-bucket or --write-bucket
  influx auth create --org "$org" "$2" "$bucket_id" --description "$1" --hide-headers | cut -f3
}
umask 022
mkdir -p /tokens/grafana /tokens/edgesieve
token "grafana (read-only)" --read-bucket > /tokens/grafana/read.token
token "edgesieve (write-only)" --write-bucket > /tokens/edgesieve/write.token
echo "tokens.sh: read-only token for Grafana and write-only token for edgesieve created"
