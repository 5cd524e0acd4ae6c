"""Errors a user can cause: the CLI prints them as one line and exits with status 2."""


class ShoshinError(Exception):
    """A problem with the user's input (path, corpus, config, run, request), not a bug."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (from `kill`, `timeout`, a job scheduler): handled like Ctrl-C, so a training run
    saves a checkpoint and records `interrupted`; the CLI then exits with 128 + 15."""
