"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a one-line message and exit code 2; anything else is a bug or a failed run.
"""


class UserError(Exception):
    """Bad input: the message names what is wrong and how to fix it, in one line."""
