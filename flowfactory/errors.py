"""The one exception type for user error: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    pass
