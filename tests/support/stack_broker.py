"""Mosquitto as the compose stack runs it, without Docker: the shipped entrypoint, config, ACL and scripts.

``StackBroker(workdir, passwords, devices)`` lays out a ``/mosquitto``-like folder (config, certs, data) under
``workdir``, makes the certificates with ``compose/make-certs.sh``, adds each device with ``compose/add-device.sh``,
and runs ``compose/mosquitto/entrypoint.sh`` (which checks the secrets, writes the password file and execs
mosquitto). The only changes to the shipped config are the paths, the two listener ports (loopback, free) and the
log file. ``port`` is the plain listener, ``tls_port`` the TLS one (certificate for localhost and 127.0.0.1).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.mosquitto import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def stack_layout(root: Path, devices: dict[str, str], certs: bool = True) -> Path:
    """The folder the entrypoint expects (``MOSQUITTO_DIR``); returns it."""
    config = root / "config"
    config.mkdir(parents=True)
    (root / "data").mkdir()
    for name in ("acl", "entrypoint.sh"):
        shutil.copy(COMPOSE / "mosquitto" / name, config / name)
    shutil.copy(COMPOSE / "check-secrets.sh", config / "check-secrets.sh")
    env = {**os.environ, "PATH": PATH, "DEVICES_FILE": str(config / "devices.passwd")}
    for device, pw in devices.items():
        subprocess.run(["sh", str(COMPOSE / "add-device.sh"), device], env={**env, "DEVICE_PASSWORD": pw},
                       check=True, capture_output=True)
    if certs:
        subprocess.run(["sh", str(COMPOSE / "make-certs.sh"), "localhost", "127.0.0.1"],
                       env={**env, "CERTS_DIR": str(root / "certs")}, check=True, capture_output=True)
    return root


class StackBroker:
    def __init__(self, workdir: Path, passwords: dict[str, str], devices: dict[str, str] | None = None):
        self.root = stack_layout(Path(workdir) / "mosquitto", devices or {})
        self.port, self.tls_port = free_port(), free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.ca = self.root / "certs" / "ca.crt"
        self.log = self.root / "mosquitto.log"
        conf = (COMPOSE / "mosquitto" / "mosquitto.conf").read_text()
        conf = re.sub(r"^listener 8883$", f"listener {self.tls_port} 127.0.0.1", conf, flags=re.M)
        conf = re.sub(r"^listener 1883$", f"listener {self.port} 127.0.0.1", conf, flags=re.M)
        conf = conf.replace("/mosquitto/", f"{self.root}/")
        conf = re.sub(r"^log_dest stdout$", f"log_dest file {self.log}", conf, flags=re.M)
        if os.geteuid() == 0:
            conf += f"\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
        (self.root / "config" / "mosquitto.conf").write_text(conf)
        env = {**os.environ, "PATH": PATH, "MOSQUITTO_DIR": str(self.root),
               "MQTT_EDGESIEVE_PASSWORD": passwords["edgesieve"], "MQTT_SIMULATOR_PASSWORD": passwords["simulator"]}
        self.proc = subprocess.Popen(["sh", str(self.root / "config" / "entrypoint.sh")], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        err = self.proc.stderr.read().decode()[-800:] if self.proc.poll() is not None else ""
        self.close()
        raise RuntimeError(f"the stack's mosquitto did not start: {err}\n{self.log.read_text() if self.log.exists() else ''}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
