"""The one exception type for bad user input.

Readers and commands raise `InputError` with a message that already names the place
(`file:line: reason`); the command-line layer turns it into one line on stderr and exit code 2,
so a user never sees a traceback for a mistake in their own files.
"""


class InputError(ValueError):
    """A user-supplied file or argument is malformed; the message is shown as is."""
