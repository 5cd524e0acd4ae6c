"""Schemathesis hooks for test_serving_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

One rule of the API relates two fields in a way JSON Schema cannot state: a named `tool_choice`
must name one of the request's `tools`. The fuzzer cannot know it, so the 400 that enforces it is
not counted as a schema-valid request rejected; every other failure is kept.
"""

from __future__ import annotations

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep the failure unless it is the named-tool rule's 400."""
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 400:
        return True
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return True
    return not (error.get("param") == "tool_choice" and "not among the tools" in error["message"])
