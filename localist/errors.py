"""The one base of every error that is the user's to fix (a bad file or key, a refused or
unreachable target): the command line prints its message alone and exits with 2."""


class UserError(Exception):
    """Raised with a message that names the file, key or address to fix."""
