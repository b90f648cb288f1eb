"""A load-balanced cluster for acceptance tests: nginx (deploy/nginx.conf) in front of two
``gateway serve`` instances (deploy/config.instance.toml) on one PostgreSQL database.

Both files are used as shipped: the nginx config is rendered by replacing its documented example
addresses with free ports, and the instances read the instance config with per-instance
environment overrides, exactly as the README tells operators to run them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.process_helpers import ROOT, GatewayProcess, free_port

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
INSTANCE_CONF = ROOT / "deploy" / "config.instance.toml"
ADMIN_EMAIL = "lb-admin@example.com"
ADMIN_PASSWORD = "load balancer admin passphrase"
STARTUP_TIMEOUT = 60.0


def nginx_binary() -> str:
    """Debian's nginx; a clear failure (never a skip) when it is missing."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(
            "nginx is not installed, so the load-balancer test cannot run: install it with "
            "`apt-get update && apt-get install -y nginx` (.ci/run does this)"
        )
    return found


@dataclass(frozen=True)
class Ports:
    """Free loopback ports for nginx's two servers and the two instances' two listeners."""

    public: int
    internal: int
    a_ingest: int
    a_management: int
    b_ingest: int
    b_management: int

    @classmethod
    def allocate(cls) -> Ports:
        chosen: set[int] = set()
        while len(chosen) < 6:
            chosen.add(free_port())
        return cls(*sorted(chosen))


def render_nginx_conf(ports: Ports) -> str:
    """deploy/nginx.conf with its example addresses replaced by ``ports`` (all on loopback)."""
    text = NGINX_CONF.read_text()
    replacements = {
        "listen 8080;": f"listen 127.0.0.1:{ports.public};",
        "127.0.0.1:9080": f"127.0.0.1:{ports.internal}",
        "127.0.0.1:8081": f"127.0.0.1:{ports.a_ingest}",
        "127.0.0.1:9081": f"127.0.0.1:{ports.a_management}",
        "127.0.0.1:8082": f"127.0.0.1:{ports.b_ingest}",
        "127.0.0.1:9082": f"127.0.0.1:{ports.b_management}",
    }
    for example, real in replacements.items():
        # The header comment mentions each address too; the directive itself must be there.
        directive = example if example.startswith("listen") else f"{example};"
        if directive not in text and f"{example} " not in text:
            raise AssertionError(f"deploy/nginx.conf no longer contains {example!r}")
        text = text.replace(example, real)
    return text


class Nginx:
    """``nginx -p PREFIX -c nginx.conf -g 'daemon off; ...'`` as an unprivileged-style child."""

    def __init__(self, prefix: Path, ports: Ports, edits: Mapping[str, str] | None = None) -> None:
        """``edits``: more replacements (text: new text) after the ports, each one required
        (a test of what an operator would change in the file)."""
        self.prefix = prefix
        self.ports = ports
        binary = nginx_binary()
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        (prefix / "temp").mkdir(exist_ok=True)
        text = render_nginx_conf(ports)
        for old, new in (edits or {}).items():
            assert old in text, f"deploy/nginx.conf no longer contains {old!r}"
            text = text.replace(old, new)
        (prefix / "nginx.conf").write_text(text)
        globals_ = f"daemon off; pid {prefix / 'nginx.pid'};"
        command = [binary, "-p", str(prefix), "-c", "nginx.conf", "-g", globals_]
        check = subprocess.run(
            [*command[:-2], "-t", "-g", f"pid {prefix / 'nginx.pid'};"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, f"nginx -t rejected deploy/nginx.conf:\n{check.stderr}"
        self._stderr = (prefix / "logs" / "stderr.log").open("w")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        wait_for_port(ports.public, STARTUP_TIMEOUT, self.process, "nginx")
        wait_for_port(ports.internal, STARTUP_TIMEOUT, self.process, "nginx")

    def access_log(self) -> list[dict[str, Any]]:
        """Every complete access-log entry so far (the JSON format of deploy/nginx.conf)."""
        entries = []
        for line in (self.prefix / "logs" / "access.log").read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:  # the line nginx is writing right now
                break
        return entries

    async def entries(self, uri: str, at_least: int, limit: float = 10.0) -> list[dict[str, Any]]:
        """The entries for ``uri`` once there are ``at_least`` of them: nginx writes an entry
        after sending the response, so a client may see the answer before its log line."""
        deadline = time.monotonic() + limit
        while True:
            found = [e for e in self.access_log() if e["uri"] == uri]
            if len(found) >= at_least:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {at_least} log entries for {uri}")
            await asyncio.sleep(0.02)

    def error_log_tail(self, lines: int = 30) -> str:
        path = self.prefix / "logs" / "error.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """Graceful stop (SIGQUIT), then kill if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._stderr.close()


def wait_for_port(port: int, timeout: float, process: Any, what: str) -> None:
    """Until something accepts connections on 127.0.0.1:port (fails when ``process`` exits)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not listen on {port} within {timeout}s")
        time.sleep(0.05)


@dataclass
class Instance:
    """One ``gateway serve`` started from deploy/config.instance.toml."""

    name: str
    ingest_port: int
    management_port: int
    gateway: GatewayProcess

    @property
    def pid(self) -> int:
        return self.gateway.process.pid

    def served(self, event: str) -> list[dict[str, Any]]:
        """Log events of this instance called ``event``."""
        return self.gateway.named(event)


def start_instance(
    name: str, ingest_port: int, management_port: int, env: Mapping[str, str]
) -> Instance:
    """Start one instance and wait until both of its listeners are up."""
    overrides = {
        **env,
        "GATEWAY_SERVER_PORT": str(ingest_port),
        "GATEWAY_SERVER_MANAGEMENT_PORT": str(management_port),
    }
    gateway = GatewayProcess(INSTANCE_CONF, env=overrides)
    try:
        for role in ("ingest", "management"):
            gateway.wait_event("listening", timeout=STARTUP_TIMEOUT, role=role)
    except BaseException:
        gateway.kill()
        raise
    return Instance(name, ingest_port, management_port, gateway)


def stop_instance(instance: Instance) -> None:
    """SIGTERM (graceful), or just reap a killed one."""
    process = instance.gateway.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            instance.gateway.finish(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    instance.gateway.kill()


def login(port: int) -> str:
    """A bearer token for the bootstrap admin, through the management port given."""
    return login_as(port, ADMIN_EMAIL, ADMIN_PASSWORD)


def login_as(port: int, email: str, password: str) -> str:
    """A bearer token for ``email``, through the management port given."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/users/login",
        data=json.dumps({"email": email, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        token: str = json.loads(response.read())["access_token"]
        return token


@dataclass
class Cluster:
    """nginx + instances A and B on one database; ``figures`` collects what the tests count.
    ``started`` holds every instance ever started (B may be replaced), for the teardown."""

    ports: Ports
    dsn: str
    env: dict[str, str]
    nginx: Nginx
    a: Instance
    b: Instance
    token: str
    started: list[Instance] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def ensure_b_running(self) -> None:
        """Start a new instance B on the same ports when the previous one was stopped."""
        if self.b.gateway.process.poll() is None:
            return
        stop_instance(self.b)
        self.b = start_instance("B", self.ports.b_ingest, self.ports.b_management, self.env)
        self.started.append(self.b)

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.public}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.internal}"

    def upstream_name(self, address: str) -> str:
        """'A' or 'B' for an upstream address in the access log."""
        port = int(address.strip().rsplit(":", 1)[1])
        return {self.a.ingest_port: "A", self.b.ingest_port: "B"}.get(port, address)
