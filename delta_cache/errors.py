"""Errors that mean "the user gave us something wrong" (as opposed to bugs).

Front ends catch `UserInputError` and print its message as one line with a non-zero exit,
never a traceback. Every message names the offending file, flag or value.
"""


class UserInputError(ValueError):
    """Base class: bad input that the user can fix (flag values, files, schedules)."""


class ScheduleError(UserInputError):
    """A cache schedule (preset name or JSON file) is malformed or does not fit the model/run."""


class CheckpointError(UserInputError):
    """A checkpoint folder or file is missing or malformed."""
