"""The one exception type a user can cause, so callers (CLI, Slicer module) catch a single class."""


class LDAEError(Exception):
    """A problem with the user's input, files or settings.

    The message says what went wrong and what to do; it is shown to the user as it is
    (one line on the command line, a dialog in Slicer).
    """


class Cancelled(Exception):
    """Raised inside a long computation when its cancel flag is set; nothing has been written."""


# Exit codes of the ``ldae`` command line (every subcommand, ``ldae batch`` and ``ldae train`` alike).
EXIT_OK = 0
EXIT_ERROR = 1
"""A user error (bad input, option, file or model): one line on stderr says what to do; or, for
``ldae batch``, at least one row failed (the report says which)."""
EXIT_STOPPED = 3
"""``ldae batch`` stopped before all its rows were computed (run it again to finish)."""
EXIT_CANCELLED = 130
"""Ctrl-C (SIGINT) or SIGTERM: nothing partial was left behind (128 + SIGINT, as shells report it)."""
