"""A real Mosquitto broker for tests and benchmarks, started from a generated config.

Small public API (everything else is private)::

    from tests.support.mosquitto import Mosquitto, make_tls_files

    with Mosquitto(tmp_path) as broker:                 # anonymous, plain TCP, free loopback port
        broker.url                                       # "mqtt://127.0.0.1:<port>"
        broker.restart()                                 # same port; persisted sessions survive
        broker.stop(); broker.start()                    # e.g. to test a consumer while the broker is down

    tls = make_tls_files(tmp_path / "pki")               # CA, server and client certs (cryptography)
    with Mosquitto(tmp_path, users={"alice": "s3cret"}, tls=tls) as broker:
        broker.url                                       # "mqtts://localhost:<port>"

- ``Mosquitto(workdir, *, users=None, tls=None, require_client_cert=False, persistence=True, port=None,
  extra_config=())``: nothing starts until ``start()`` or ``with``.
- One listener on 127.0.0.1: plain TCP, or TLS when ``tls`` is given (the server certificate is for
  ``localhost`` and ``127.0.0.1``). ``users`` turns anonymous access off and writes a hashed password file.
- ``persistence=True`` keeps sessions and queued QoS>=1 messages in ``workdir/persist`` across ``restart()``.
- ``stop()`` sends SIGTERM (Mosquitto saves its database), waits, and kills after 5 s. ``close()`` /
  ``__exit__`` always stop it; an ``atexit`` hook stops any broker a crashed test left behind.
- ``log()`` returns Mosquitto's log (useful in an assertion message).

Run ``python -m tests.support.mosquitto`` to start one by hand (prints the url, Ctrl-C stops it).
"""

from __future__ import annotations

import atexit
import datetime as _dt
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

_RUNNING: "weakref.WeakSet[Mosquitto]" = weakref.WeakSet()


def available() -> bool:
    """True when the mosquitto binary is installed (tests skip with a message otherwise)."""
    return os.access(MOSQUITTO, os.X_OK)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made by :func:`make_tls_files`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, hostname: str = "localhost", ca_name: str = "edgesieve test CA") -> TlsFiles:
    """Generate a CA, a server certificate for ``hostname``/127.0.0.1 and a client certificate (EC P-256, 1 day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert, key) -> tuple[Path, Path]:
        c, k = directory / f"{stem}.crt", directory / f"{stem}.key"
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        k.chmod(0o600)
        return c, k

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name(ca_name)).issuer_name(name(ca_name))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage, san: list | None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    ca_path, _ = write("ca", ca_cert, ca_key)
    s_cert, s_key = leaf(hostname, ExtendedKeyUsageOID.SERVER_AUTH,
                         [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server_cert, server_key = write("server", s_cert, s_key)
    c_cert, c_key = leaf("edgesieve-client", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    client_cert, client_key = write("client", c_cert, c_key)
    return TlsFiles(ca_path, server_cert, server_key, client_cert, client_key)


class Mosquitto:
    """One Mosquitto process with a generated config; see the module docstring."""

    def __init__(self, workdir: Path | str, *, users: dict[str, str] | None = None, tls: TlsFiles | None = None,
                 require_client_cert: bool = False, persistence: bool = True, port: int | None = None,
                 extra_config: tuple[str, ...] | list[str] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.persistence = persistence
        self.host = "localhost" if tls else "127.0.0.1"
        self.port = port or free_port()
        self.extra_config = list(extra_config)
        self._proc: subprocess.Popen | None = None
        self._log_path = self.workdir / "mosquitto.log"

    # -- public -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        if self.running:
            return self
        conf = self._write_config()
        self._log_path.touch()
        deadline = time.monotonic() + timeout
        while True:
            self._proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            _RUNNING.add(self)
            if self._wait_listening(deadline):
                return self
            # Usually the port is still in TIME_WAIT after a restart, or someone took it: retry until timeout.
            self._kill()
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start listening on {self.host}:{self.port} within "
                                   f"{timeout:.0f} s; its log ({self._log_path}):\n{self.log()[-2000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (Mosquitto writes its persistence database), then SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None
        _RUNNING.discard(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Mosquitto {self.url} {'running' if self.running else 'stopped'}>"

    # -- private ------------------------------------------------------------------------------
    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _wait_listening(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _write_config(self) -> Path:
        lines = [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"log_dest file {self._log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
            "per_listener_settings false",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            f"allow_anonymous {'false' if self.users else 'true'}",
        ]
        if self.persistence:
            pdir = self.workdir / "persist"
            pdir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {pdir}/", "autosave_interval 1"]
        if self.users:
            pfile = self.workdir / "passwd"
            pfile.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            pfile.chmod(0o600)
            subprocess.run([MOSQUITTO_PASSWD, "-U", str(pfile)], check=True, capture_output=True)
            lines.append(f"password_file {pfile}")
        lines.append(f"listener {self.port} 127.0.0.1")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.server_cert}", f"keyfile {self.tls.server_key}",
                      f"require_certificate {'true' if self.require_client_cert else 'false'}"]
        lines += self.extra_config
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf


@atexit.register
def _stop_leftovers() -> None:
    for broker in list(_RUNNING):
        broker.stop(timeout=1.0)


if __name__ == "__main__":  # pragma: no cover - manual use
    import tempfile

    with tempfile.TemporaryDirectory() as d, Mosquitto(d) as b:
        print(b.url, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
