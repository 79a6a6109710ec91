"""A second, real Docker engine that a test may stop and start (a box whose dockerd restarts).

It runs in its own network namespace, so its bridge handling never touches the
host engine's docker0, with its own socket, data root and exec root. Tests point
compose and the docker CLI at it through DOCKER_HOST.

Optionally (``link``) a veth pair joins its namespace to the host's, like a second box on a LAN: the host
side gets the /30's first address, the engine's side the second. Its bridges may then use iptables (NAT
for its containers, in its own namespace only: ``iptables=True``), and ``extra_args`` can make it listen
there too (tcp + TLS). :meth:`destroy` removes the pair and the namespace; the data root stays (it caches
the images loaded into it, as the host engine's does).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path


class SecondEngine:
    def __init__(
        self,
        name: str = "idp-test-b",
        link: str | None = None,
        iptables: bool = False,
        extra_args: tuple[str, ...] | list[str] = (),
    ):
        self.name = name
        self.iptables = iptables
        self.extra_args = list(extra_args)
        # The veth pair to the host (None: the namespace has loopback only, as before).
        self.link = ipaddress.ip_network(link) if link else None
        if self.link is not None:
            if self.link.prefixlen != 30:
                raise ValueError(f"link {link}: a /30 (host side .1, engine side .2)")
            self.host_address, self.inner_address = (str(a) for a in list(self.link.hosts())[:2])
            self.host_if, self.inner_if = f"{name[:12]}-h", f"{name[:12]}-n"
        self.socket = Path(f"/run/{name}.sock")
        self.host = f"unix://{self.socket}"
        self.pidfile = Path(f"/run/{name}.pid")
        self.data_root = Path(f"/var/lib/{name}")
        self.exec_root = Path(f"/run/{name}")
        self.log = Path(f"/tmp/{name}-dockerd.log")
        self.proc: subprocess.Popen | None = None

    def docker(self, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", "-H", self.host, *args], capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def answering(self) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}", timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self, timeout_s: float = 60) -> None:
        self._stop_leftover()
        if subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.find(self.name) < 0:
            subprocess.run(["ip", "netns", "add", self.name], check=True)
            subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True)
        if self.link is not None:
            self._add_link()
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        with self.log.open("ab") as out:
            # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts.
            self.proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.name}",
                    "dockerd",
                    "-H",
                    self.host,
                    "--data-root",
                    str(self.data_root),
                    "--exec-root",
                    str(self.exec_root),
                    "--pidfile",
                    str(self.pidfile),
                    f"--iptables={'true' if self.iptables else 'false'}",
                    *self.extra_args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not self.answering():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"second dockerd did not start (see {self.log}):\n{self._log_tail()}")
            time.sleep(0.3)

    def stop(self, timeout_s: float = 60) -> None:
        """Stop dockerd as `systemctl stop docker` would (SIGTERM, containers go down with it)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def destroy(self) -> None:
        """Stop dockerd, then remove the veth pair (if any) and the network namespace."""
        try:
            self.stop()
        finally:
            if self.link is not None:
                subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def _add_link(self) -> None:
        # A pair left by a crashed run would hold the addresses: delete it first (either end removes both).
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        prefix = self.link.prefixlen
        in_ns = ["ip", "netns", "exec", self.name]
        for command in (
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if],
            ["ip", "link", "set", self.inner_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_address}/{prefix}", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            [*in_ns, "ip", "addr", "add", f"{self.inner_address}/{prefix}", "dev", self.inner_if],
            [*in_ns, "ip", "link", "set", self.inner_if, "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)

    def load_image(self, image: str) -> None:
        if self.docker("image", "inspect", image).returncode == 0:
            return
        saved = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        loaded = subprocess.run(
            ["docker", "-H", self.host, "load"], stdin=saved.stdout, capture_output=True, timeout=300
        )
        saved.wait(timeout=60)
        if loaded.returncode != 0:
            raise RuntimeError(f"could not load {image} into the second engine: {loaded.stderr.decode()}")

    def _stop_leftover(self) -> None:
        # A crashed earlier run may have left its dockerd behind: stop it, keep its data root.
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.2)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return

    def _log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
