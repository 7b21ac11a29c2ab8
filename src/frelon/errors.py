"""The one exception type for problems a user can fix: the message says what and how."""


class FrelonError(Exception):
    """A problem with the user's input, config or data; the message names it and the fix."""
