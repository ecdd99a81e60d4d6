"""The one error type of a bad input found before training starts, and what a bad path says."""

import os

__all__ = ["InputError", "path_problem"]


class InputError(ValueError):
    """A bad config value, dataset name or dataset file, found before training starts.

    The message names the config key or the file and says how to fix it; the command-line entry
    points log it and exit with status 2.
    """


def path_problem(path, *, folder=False):
    """``'<path>' does not exist`` (or is a folder/file instead), None when ``path`` is fine.

    A relative path is said relative to the working directory.
    """
    if os.path.isdir(path) if folder else os.path.isfile(path):
        return None
    where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()!r})"
    wrong = "is a file, not a folder" if folder else "is a folder, not a file"
    return f"{path!r}{where} {wrong if os.path.exists(path) else 'does not exist'}"
