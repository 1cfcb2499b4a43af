"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a one-line message and exit code 2; anything else is a bug or a failed run.
"""

import errno


class UserError(Exception):
    """Bad input: the message names what is wrong and how to fix it, in one line."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""The `errno` of a write that found its disk full (or its quota used up)."""


def no_space(exc: BaseException) -> bool:
    """Whether `exc` is a write that found its disk full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE
