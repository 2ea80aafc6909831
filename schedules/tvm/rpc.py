"""TVM's own RPC tracker and server as child processes (tests, demos, a one-machine farm).

Both bind to the address given (127.0.0.1 by default, never 0.0.0.0 here) on free ports. Each is started in
its own process group, because the server forks a ``popen_worker`` child per session: stopping means
signalling the whole group (SIGTERM, then SIGKILL), by process id, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def _servers(host: str, port: int, key: str) -> int:
    from tvm import rpc

    summary = rpc.connect_tracker(host, port).summary()
    return sum(1 for s in summary.get("server_info", []) if str(s.get("key", "")).endswith(key))


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop ``proc`` and every process of its group (it leads one: started with start_new_session)."""
    if proc.poll() is None or _group_alive(proc.pid):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            end = time.monotonic() + grace
            while time.monotonic() < end and _group_alive(proc.pid):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)
            if not _group_alive(proc.pid):
                break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg(0); look for a live member (without /proc, trust killpg).
    return not os.path.isdir("/proc") or bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """Live process ids of a process group (Linux /proc), for tests."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(pid))
    return out


@contextlib.contextmanager
def local_farm(key: str = "ea-ops-local", host: str = "127.0.0.1", timeout: float = 60.0,
               env: dict | None = None) -> Iterator[dict]:
    """A tracker and one server registered under ``key``; yields ``{"host", "port", "key", "pids"}``.

    Both processes (and their children) are stopped on exit, also when the body raises.
    """
    procs: list[subprocess.Popen] = []
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        tport = free_port(host)
        tracker = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(tport),
             "--port-end", str(tport + 1), "--silent"], start_new_session=True, **quiet)
        procs.append(tracker)
        _wait_port(host, tport, tracker, timeout)
        sport = free_port(host)
        server = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(sport),
             "--port-end", str(sport + 1), "--tracker", f"{host}:{tport}", "--key", key,
             "--custom-addr", host, "--silent"],
            start_new_session=True, env={**os.environ, **(env or {})}, **quiet)
        procs.append(server)
        end = time.monotonic() + timeout
        while _servers(host, tport, key) < 1:
            if server.poll() is not None:
                raise RuntimeError(f"rpc_server exited with {server.returncode}")
            if time.monotonic() > end:
                raise TimeoutError(f"no server registered under {key!r} after {timeout} s")
            time.sleep(0.3)
        yield {"host": host, "port": tport, "key": key, "pids": [p.pid for p in procs]}
    finally:
        for p in reversed(procs):
            stop(p)
