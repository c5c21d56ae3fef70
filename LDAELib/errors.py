"""The one exception type a user can cause, so callers (CLI, Slicer module) catch a single class."""


class LDAEError(Exception):
    """A problem with the user's input, files or settings.

    The message says what went wrong and what to do; it is shown to the user as it is
    (one line on the command line, a dialog in Slicer).
    """


class Cancelled(Exception):
    """Raised inside a long computation when its cancel flag is set; nothing has been written."""
