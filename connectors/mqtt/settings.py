"""Connection settings shared by the ``mqtt`` source and sink: broker url, client id, credentials, TLS, reconnect.

The password is a pydantic ``SecretStr`` from the pipeline file, the environment or a password file; never logged or
printed, and errors about it never include it.

>>> parse_url("mqtts://broker.local")
('mqtts', 'broker.local', 8883)
>>> default_client_id("gw1", "plant1", "devices", "/var/lib/edgesieve", host="gw1")
'edgesieve-gw1-plant1-devices-aa30783d'
"""

from __future__ import annotations

import os
import re
import socket
import zlib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pipeline.config import INPUT
from pipeline.redact import remember
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an ``mqtt://`` or ``mqtts://`` url; ValueError says what is wrong."""
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"url {url!r}: use mqtt://host:1883 or mqtts://host:8883")
    if not u.hostname:
        raise ValueError(f"url {url!r} has no host")
    if u.username or u.password:
        raise ValueError("url must not contain credentials: use username/password_env/password_file")
    scheme = "mqtts" if u.scheme in ("mqtts", "ssl") else "mqtt"
    return scheme, u.hostname, u.port or (8883 if scheme == "mqtts" else 1883)


class TlsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_file: str | None = Field(None, json_schema_extra=INPUT, description="PEM file of the CA(s) to trust; default: the system's CAs.")
    cert_file: str | None = Field(None, json_schema_extra=INPUT, description="Client certificate (PEM) for brokers that require one.")
    key_file: str | None = Field(None, json_schema_extra=INPUT, description="Private key (PEM) of cert_file.")
    key_password: SecretStr | None = Field(None, description="Passphrase of an encrypted key_file; prefer key_password_file (never logged).")
    key_password_file: str | None = Field(None, json_schema_extra=INPUT, description="File whose first line is the passphrase of key_file.")
    insecure: bool = Field(False, description="Skip hostname verification (logs a warning). Never in production.")

    @model_validator(mode="after")
    def _pair(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: give both cert_file and key_file, or neither")
        if self.key_password is not None and self.key_password_file is not None:
            raise ValueError("tls: give key_password or key_password_file, not both")
        return self

    def key_passphrase(self, where: str) -> str | None:
        """The key_file's passphrase from the config or its file; errors never include it."""
        if self.key_password is not None:
            return self.key_password.get_secret_value()
        if self.key_password_file is None:
            return None
        try:
            text = Path(self.key_password_file).read_text()
        except OSError as e:
            raise ValueError(f"{where}: cannot read tls.key_password_file {self.key_password_file}: {e.strerror}") from None
        remember(text.splitlines()[0] if text else None)
        return text.splitlines()[0] if text else ""


class ReconnectOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_delay: float = Field(0.5, gt=0, le=60, description="First reconnect delay in seconds (doubles each try, with jitter).")
    max_delay: float = Field(30.0, gt=0, le=3600, description="Longest reconnect delay in seconds.")


class MqttConnectionFields(BaseModel):
    """Connection settings shared by the mqtt source and sink."""

    url: str = Field("mqtt://localhost:1883", description="Broker: mqtt://host:port, or mqtts://host:port for TLS.")
    client_id: str | None = Field(None, max_length=128, description="MQTT client id; default: stable, from node, pipeline and id.")
    protocol: Annotated[Literal["3.1.1", "5"], BeforeValidator(str)] = Field(
        "5", description="MQTT protocol version: 5 (receive-maximum, shared subscriptions, user properties) or 3.1.1.")
    keepalive: int = Field(30, ge=5, le=3600, description="Keep-alive interval in seconds.")
    username: str | None = Field(None, description="User name (not secret).")
    username_env: str | None = Field(None, description="Environment variable holding the user name.")
    password: SecretStr | None = Field(None, description="Password; prefer password_env or password_file (never logged).")
    password_env: str | None = Field(None, description="Environment variable holding the password.")
    password_file: str | None = Field(None, json_schema_extra=INPUT, description="File whose first line is the password.")
    tls: TlsOptions | None = Field(None, description="TLS settings; mqtts:// alone uses the system CAs.")
    node: str | None = Field(None, pattern=r"^[^/+#]+$",
                             description="Name of this gateway in edgesieve/{node}/status and .../deadletter; default: host name.")
    reconnect: ReconnectOptions = Field(default_factory=ReconnectOptions, description="Reconnect backoff.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_url(v)
        return v

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname()

    @model_validator(mode="after")
    def _one_password(self):
        given = [k for k in ("password", "password_env", "password_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of password, password_env, password_file (got {', '.join(given)})")
        if self.username and self.username_env:
            raise ValueError("give username or username_env, not both")
        if given and not (self.username or self.username_env):
            raise ValueError(f"{given[0]} is set but no username: add username or username_env")
        return self


def credentials(cfg: MqttConnectionFields, where: str) -> tuple[str | None, SecretStr | None]:
    """(username, password) resolved from the config, the environment or a file. Errors never include the secret."""
    user = cfg.username
    if cfg.username_env:
        user = os.environ.get(cfg.username_env)
        if user is None:
            raise ValueError(f"{where}: environment variable {cfg.username_env} (username_env) is not set")
    pw = cfg.password
    if cfg.password_env:
        if cfg.password_env not in os.environ:
            raise ValueError(f"{where}: environment variable {cfg.password_env} (password_env) is not set")
        pw = SecretStr(os.environ[cfg.password_env])
    elif cfg.password_file:
        try:
            pw = SecretStr(Path(cfg.password_file).read_text().splitlines()[0] if Path(cfg.password_file).stat().st_size else "")
        except OSError as e:
            raise ValueError(f"{where}: cannot read password_file {cfg.password_file}: {e.strerror}") from None
    if pw is not None and user is None:
        raise ValueError(f"{where}: a password is set but no username")
    remember(pw)
    return user, pw


def default_client_id(node: str, pipeline: str, item_id: str, state_dir: str | Path = ".edgesieve",
                      host: str | None = None) -> str:
    """``edgesieve-{node}-{pipeline}-{id}-{h}``, h = 8 hex digits of a hash of the host name and the absolute state
    folder: stable across restarts (so a persistent session is found again), different for two pipelines or two
    gateways that share a node name or a pipeline file. Shortened with a hash when over 64 characters."""
    where = f"{host if host is not None else socket.gethostname()}\0{Path(state_dir).absolute()}"
    cid = re.sub(r"[^A-Za-z0-9_.-]", "_", f"edgesieve-{node}-{pipeline}-{item_id}-{zlib.crc32(where.encode()):08x}")
    return cid if len(cid) <= 64 else f"{cid[:55]}-{zlib.crc32(cid.encode()):08x}"
