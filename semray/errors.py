"""The errors a user can fix, as one family: the CLI prints a SemrayError as one line naming the file,
flag or setting and what to do, and exits with its code; anything else is a bug and keeps its
traceback.

Exit codes of every command (also in `semray --help` and the README):

    0    success
    1    an unexpected error (a bug: the traceback is printed)
    2    bad usage or input: a flag, config, file or run directory that cannot be used
    3    a partial failure above the allowed fraction (e.g. too many unreadable images)
    4    nothing could be done (e.g. not one image could be scored)
    130  interrupted (Ctrl-C); the command says how to resume
"""
from __future__ import annotations

EXIT_CODES = {0: "success", 1: "unexpected error (a bug: traceback printed)",
              2: "bad usage or input (a flag, config, file or run directory that cannot be used)",
              3: "partial failure above the allowed fraction", 4: "nothing could be done (e.g. no image scorable)",
              130: "interrupted (Ctrl-C); the command says how to resume"}


class SemrayError(ValueError):
    """A mistake the user can fix. A ValueError, so callers that caught those still do."""
    exit_code = 2


class ConfigError(SemrayError):
    """A config value, YAML file, search space or flag that cannot be used."""


class InputError(SemrayError, FileNotFoundError):
    """An input that does not exist (a file, directory, glob or URI given on the command line)."""


class PartialFailureError(SemrayError):
    """Some of the work failed, more than allowed; the rest is done and written."""
    exit_code = 3


class NothingDoneError(SemrayError):
    """The command could do none of its work (e.g. not one image could be scored)."""
    exit_code = 4
