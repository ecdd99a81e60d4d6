"""The one error type of a bad input found before training starts."""

__all__ = ["InputError"]


class InputError(ValueError):
    """A bad config value, dataset name or dataset file, found before training starts.

    The message names the config key or the file and says how to fix it; the command-line entry
    points log it and exit with status 2.
    """
