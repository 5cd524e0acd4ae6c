"""Errors a user can cause: the CLI prints them as one line and exits with status 2."""


class ShoshinError(Exception):
    """A problem with the user's input (path, corpus, config, run, request), not a bug."""
