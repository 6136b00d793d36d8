"""One exception type for a user's mistake.

Anything the user can fix (a bad file, a missing field, an unknown name, mismatched shapes
passed to a public function) raises :class:`PlotprefError` with a message that names the file,
line or field and says what to do. The CLI prints the message and exits with status 2; it never
shows a traceback for these.
"""


class PlotprefError(ValueError):
    """A user-facing error: the message says what is wrong and how to fix it."""
