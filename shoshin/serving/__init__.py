"""Serving: an OpenAI-compatible HTTP API with continuous batching, and a web chat page."""

from shoshin.serving.app import ServeConfig, create_app
from shoshin.serving.batching import BatchScheduler
from shoshin.serving.server import background_server, load_app, serve

__all__ = [
    "BatchScheduler",
    "ServeConfig",
    "background_server",
    "create_app",
    "load_app",
    "serve",
]
