"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """A problem with the user's input or machine, with the fix in the message."""
