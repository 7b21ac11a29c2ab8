"""The exception type for problems a user can fix, the message saying what and how; and the warning type for
those that do not stop a run."""


class FrelonError(Exception):
    """A problem with the user's input, config or data; the message names it and the fix."""


class FrelonWarning(UserWarning):
    """Something a user may want to fix that does not stop the run (an image far smaller than the model's
    input); the `frelon` command prints it as one line."""
