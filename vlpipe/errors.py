"""One exception type for mistakes a user can fix.

The CLI turns a `VlpipeError` into a single `error: ...` line and exit code 1 with no traceback;
anything else is a bug in vlpipe and keeps its traceback so it can be reported.
"""


class VlpipeError(Exception):
    """A problem with the user's input or environment, described in one actionable line."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message for a `VlpipeError`: one line (numpy, Arrow and torch messages can span
    several), an OSError's reason without its `[Errno N]` prefix, cut to `limit` characters."""
    message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    text = " ".join(message.split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object, limit: int = 60) -> str:
    """A JSON value quoted in an error message, cut to `limit` characters."""
    import json

    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
