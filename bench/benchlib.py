"""Helpers shared by benchmarks: child processes, medians, percentiles."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "agent"),
                                         env.get("PYTHONPATH", "")])
    return env


def spawn(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m module args`` (a bench role) with its stdout piped."""
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                            stderr=None, text=True, env=child_env() | (env or {}),
                            cwd=str(HERE))


def read_json_line(proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    """The next JSON line a child prints (children print one per event)."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise TimeoutError(f"child {proc.args} said nothing in {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child {proc.args} exited with {proc.wait()}")
    return json.loads(line)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def free_port(kind: int = 1) -> int:
    """A free TCP (kind=1) or UDP (kind=2) port on 127.0.0.1."""
    import socket

    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port: int, timeout: float = 10.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.05)


class Servers:
    """The brokers/nodes a benchmark talks to, started once and stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def macula_node(self, name: str, seed: str | None = None) -> str:
        proc = spawn("mq_roles", "macula-node", name, *([seed] if seed else []))
        self.procs.append(proc)
        return f"127.0.0.1:{read_json_line(proc, 30)['port']}"

    def nats(self) -> str:
        import shutil

        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(exe):
            raise RuntimeError("nats-server is not installed: apt-get install -y nats-server")
        port = free_port()
        self.procs.append(subprocess.Popen([exe, "-a", "127.0.0.1", "-p", str(port)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_tcp(port)
        return f"127.0.0.1:{port}"

    def zenoh(self) -> str:
        port = free_port()
        proc = spawn("mq_roles", "zenoh-router", str(port))
        self.procs.append(proc)
        read_json_line(proc, 30)
        wait_tcp(port)
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        for p in self.procs:
            stop(p)


_runs = 0


def pubsub_run(system: str, sub_addr: str, pub_addr: str, n: int, size: int,
               latency: bool = False) -> dict:
    """One subscriber and one publisher process; the subscriber's report.

    Each run has a topic of its own: a node still caching "no remote subscriber" for
    the last run's topic (macula's DHT interest cache, 3 s) does not decide this one."""
    global _runs
    _runs += 1
    kind = "lat-" if latency else ""
    env = {"MQ_TOPIC": f"bench.data.r{os.getpid()}x{_runs}"}
    sub = spawn("mq_roles", f"{system}-{kind}sub", sub_addr, str(n), env=env)
    pub = None
    try:
        read_json_line(sub, 30)  # ready
        pub = spawn("mq_roles", f"{system}-{kind}pub", pub_addr, str(n), str(size), env=env)
        return read_json_line(sub, 120)
    finally:
        if pub is not None:
            stop(pub)
        stop(sub)
