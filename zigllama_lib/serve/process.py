"""A server in a subprocess, for notebooks, tests and benchmarks: started, waited for, always stopped.

    with ServerProcess.zigllama(["--model", "smollm2-135m-instruct", "--n-ctx", "512"]) as srv:
        httpx.get(srv.url + "/v1/models")

It waits until ``GET /health`` answers 200 (at most ``startup_timeout`` seconds) and fails with the
tail of the server's stderr if the process exits or never answers, so a broken server cannot hang
its caller. Any command works (llama.cpp's ``llama-server`` too), as long as it serves /health.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

import httpx

from ..foundation.errors import ZigLlamaError

STARTUP_TIMEOUT_S = 240.0  # model load plus loading (or compiling) the Numba cache on a cold machine


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``cmd`` running as a child process that serves HTTP on ``127.0.0.1:port``."""

    def __init__(self, cmd: list[str], port: int, name: str = "server", env: dict | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT_S, health_path: str = "/health"):
        self.cmd, self.port, self.name = list(cmd), port, name
        self.url = f"http://127.0.0.1:{port}"
        self.env, self.startup_timeout, self.health_path = env, startup_timeout, health_path
        self.proc: subprocess.Popen | None = None
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.startup_s: float | None = None  # seconds from the start to the first 200 on health_path

    @classmethod
    def zigllama(cls, serve_args: list[str], port: int | None = None, env: dict | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT_S) -> "ServerProcess":
        """``zigllama serve`` with ``serve_args`` on a free port (this Python, this checkout)."""
        port = port or free_port()
        cmd = [sys.executable, "-m", "zigllama_lib.cli", "serve", "--port", str(port), *serve_args]
        return cls(cmd, port, name="zigllama serve", env=env, startup_timeout=startup_timeout)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "ServerProcess":
        """Start the process (in a session of its own, so that :meth:`stop` reaches its children
        too) and wait for ``health_path``."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the drain thread read the last lines
                raise ZigLlamaError(f"{self.name} exited with status {self.proc.returncode} before answering "
                                    f"{self.health_path}:\n{self.stderr()}")
            try:
                if httpx.get(self.url + self.health_path, timeout=2.0).status_code == 200:
                    self.startup_s = time.monotonic() - t0
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ZigLlamaError(f"{self.name} did not answer {self.health_path} within "
                                    f"{self.startup_timeout:.0f} s:\n{self.stderr()}")
            time.sleep(0.25)

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail.append(line)

    def stderr(self) -> str:
        """The last lines the server wrote to stderr."""
        return "".join(self.stderr_tail)

    def rss(self) -> int:
        """The server's resident memory in bytes (Linux ``/proc``)."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise ZigLlamaError(f"no VmRSS for process {self.proc.pid}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process group, then SIGKILL after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "ServerProcess":
        if self.proc is None:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

