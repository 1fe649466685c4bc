"""The one exception type for mistakes a user can fix (bad config, missing file, bad data).

The CLI prints it as one line and exits 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, described in one line that names the file/key/value."""

    exit_code = 2
