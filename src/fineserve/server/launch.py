"""Run the app with uvicorn: in the foreground (`serve`) or in a background thread on a free
loopback port (`LiveServer`, for tests, the demo and benchmarks).

`LiveServer` invariants: `start()` returns once the server answers `/health`; `stop()` asks
uvicorn to exit, which stops accepting connections, lets in-flight responses finish (up to
`graceful_s`), then runs the app's shutdown (the backend drains and stops).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready TCP socket bound to a free port on `host`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.set_inheritable(True)
    return sock


def spawn_serve(
    serve_args: list[str], timeout_s: float = 60.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `fineserve serve SERVE_ARGS` in a child process on a free loopback port; returns
    the process and its base URL once `/health` answers 200 (killed, RuntimeError, if not within
    `timeout_s`)."""
    import httpx

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "fineserve.cli", "serve", *serve_args, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"fineserve serve {' '.join(serve_args)} did not start")


def uvicorn_config(app: Any, host: str, port: int, graceful_s: float, **kw: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=kw.pop("log_level", "warning"),
        timeout_graceful_shutdown=graceful_s,
        lifespan="on",
        access_log=kw.pop("access_log", False),
        **kw,
    )


def foreground_server(config: Any) -> Any:
    """A uvicorn server whose SIGINT/SIGTERM start a graceful shutdown (a second one forces
    it) and that returns normally afterwards instead of re-raising the signal."""
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    return _Server(config)


class LiveServer:
    """The app served by uvicorn in a daemon thread on 127.0.0.1 (see the module docstring)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", graceful_s: float = 30.0) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self._sock = free_socket(host)
        self.port: int = self._sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, graceful_s))
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> LiveServer:
        self._thread = threading.Thread(target=self._run, name="fineserve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start in time")
            time.sleep(0.02)
        return self

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start()
            self.error = exc

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
