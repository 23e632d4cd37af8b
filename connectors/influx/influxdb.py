"""The ``influxdb`` sink: aggregates to InfluxDB 2 (or anything speaking ``/api/v2/write``), through a durable outbox.

Each record becomes one point: ``measurement``, the record's tags, its numeric/boolean fields, and its ``ts`` as the
timestamp. After a ``window`` stage ``ts`` is the window start, so sending the same aggregate again overwrites the
same point instead of adding one. Points go to an on-disk outbox first (see ``connectors/influx/outbox.py``) and a
sender thread delivers them in order, retrying through outages; the outbox survives restarts and kill -9.

The token is read from ``token`` (use ``${INFLUX_TOKEN}`` in the file), ``token_file``, or the environment variable
named by ``token_env``; it is a ``SecretStr``: masked in ``repr``, ``validate`` output and every log line.

>>> cfg = InfluxdbConfig(id="cloud", type="influxdb", inputs=["w"], url="https://eu.example.com", org="acme",
...                      bucket="plant", token="t0ps3cret")
>>> "t0ps3cret" in repr(cfg) or "t0ps3cret" in str(cfg.model_dump())
False
>>> resolve_token(cfg, {})
't0ps3cret'
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Mapping

from pydantic import Field, SecretStr, field_validator

from connectors.influx.outbox_sink import OutboxSink, OutboxSinkConfig
from connectors.influx.transport import InfluxTransport
from pipeline.config import INPUT, Duration
from pipeline.redact import mask_url_credentials, remember


class InfluxdbConfig(OutboxSinkConfig):
    type: Literal["influxdb"]
    url: str = Field(description="Server URL, e.g. `https://eu-central-1-1.aws.cloud2.influxdata.com` or `http://localhost:8086`.")
    org: str = Field(min_length=1, description="InfluxDB organisation.")
    bucket: str = Field(min_length=1, description="Bucket the points are written to.")
    token: SecretStr | None = Field(None, description="API token; prefer `${INFLUX_TOKEN}`, `token_file` or `token_env` to writing it here.")
    token_file: str | None = Field(None, json_schema_extra=INPUT, description="File holding the token (e.g. a Docker/Kubernetes secret); surrounding whitespace is ignored.")
    token_env: str = Field("INFLUX_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                           description="Environment variable with the token, used when neither `token` nor `token_file` is set.")
    precision: Literal["s", "ms", "us", "ns"] = Field("ms", description="Timestamp precision of the written points.")
    gzip: bool = Field(True, description="Compress request bodies (saves uplink bandwidth; InfluxDB accepts gzip).")
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate (turn off only for a test server).")
    ca_file: str | None = Field(None, json_schema_extra=INPUT, description="PEM file of the CA that signed the server's certificate (default: the system's CAs).")
    timeout: Duration = Field(10.0, gt=0, le=300, description="Time limit of one write request.")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {mask_url_credentials(v)!r}")
        return v.rstrip("/")


def resolve_token(cfg: InfluxdbConfig, env: Mapping[str, str] | None = None) -> str:
    """The token from ``token``, else ``token_file``, else ``$token_env``; a clear error (without the secret) if none."""
    env = os.environ if env is None else env
    if cfg.token is not None and cfg.token.get_secret_value():
        remember(cfg.token)
        return cfg.token.get_secret_value()
    if cfg.token_file:
        path = Path(cfg.token_file)
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ValueError(f"sink {cfg.id!r}: cannot read token_file {path}: {e.strerror}") from None
        if not token:
            raise ValueError(f"sink {cfg.id!r}: token_file {path} is empty")
        remember(token)
        return token
    token = env.get(cfg.token_env, "").strip()
    if not token:
        raise ValueError(f"sink {cfg.id!r}: no InfluxDB token: set the environment variable {cfg.token_env}, "
                         f"or `token_file:` / `token: ${{{cfg.token_env}}}` in the sink's config")
    remember(token)
    return token


class InfluxdbSink(OutboxSink):
    """Aggregates to InfluxDB through the durable outbox (see module docstring)."""

    Config = InfluxdbConfig
    EXAMPLE = {"url": "http://localhost:8086", "org": "acme", "bucket": "edge", "measurement": "machine_10s"}

    def make_transport(self) -> InfluxTransport:
        c = self.config
        return InfluxTransport(url=c.url, org=c.org, bucket=c.bucket, token=resolve_token(c), precision=c.precision,
                               timeout_s=c.timeout, gzip=c.gzip, verify_tls=c.verify_tls, ca_file=c.ca_file, sink_id=c.id)
