"""User-facing errors: the CLI prints these as one clear message, without a traceback."""


class ReslabError(Exception):
    """A mistake in the user's input (a flag, a file, a name): the message says what was expected and what was found."""


class DataError(ReslabError):
    """A dataset file is missing, truncated or corrupt."""


class NonFiniteLossError(ReslabError):
    """Training diverged (the loss or the weights stopped being finite): the run stopped; the message says what
    is on disk."""
