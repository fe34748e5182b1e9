"""The one base of every error that is the user's to fix (a bad file or key, a refused or
unreachable target): the command line prints its message alone and exits with its exit_code,
2 unless a subclass says otherwise (a storage that failed mid-run: 3)."""


class UserError(Exception):
    """Raised with a message that names the file, key or address to fix."""

    exit_code = 2  # the command line's exit status: bad input, or refused
