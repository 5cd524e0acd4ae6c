"""Running the app: `serve` for `shoshin serve`, `background_server` for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from shoshin.errors import ShoshinError
from shoshin.serving.app import ServeConfig, create_app


def model_id_for(src: str, runs_dir: str | None = None) -> str:
    """The name clients use for the model: the run's id, else the checkpoint folder's name."""
    from shoshin.runs.store import resolve_run, runs_root

    try:
        return resolve_run(src, runs_root(runs_dir)).id
    except ShoshinError:
        return Path(src).name or src


def load_app(
    src: str,
    config: ServeConfig,
    checkpoint: str = "latest",
    runs_dir: str | None = None,
    dtype: str = "fp32",
    quantize: str | None = None,
    device: str | None = None,
) -> FastAPI:
    """The app serving a run (id, prefix, `latest`, directory) or a checkpoint `shoshin.load` reads,
    at the precision asked for (see shoshin.generation.precision), on `device` (auto|cpu|cuda)."""
    from shoshin.generation.precision import prepare_for_inference
    from shoshin.loading import load

    model, tokenizer = load(src, checkpoint, runs_dir)
    model = prepare_for_inference(model, dtype, quantize, device)
    return create_app(model, tokenizer, model_id_for(src, runs_dir), config)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C)."""
    try:
        sock = _bind(host, port)
    except OSError as exc:
        raise ShoshinError(
            f"cannot listen on {host}:{port} ({exc.strerror}); try another --port"
        ) from None
    print(f"shoshin: serving on http://{host}:{sock.getsockname()[1]} (Ctrl-C to stop)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(
        sockets=[sock]
    )


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the app on a real socket in a thread (port 0: a free one); yields its base URL."""
    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
