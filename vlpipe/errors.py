"""One exception type for mistakes a user can fix.

The CLI turns a `VlpipeError` into a single `error: ...` line and exit code 1 with no traceback;
anything else is a bug in vlpipe and keeps its traceback so it can be reported.
"""


class VlpipeError(Exception):
    """A problem with the user's input or environment, described in one actionable line."""
