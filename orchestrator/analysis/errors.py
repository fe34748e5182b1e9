"""The one error of analysis, in a module of its own so that reading, the cell model and the
entry point can all raise it without importing each other."""

from __future__ import annotations

from localist.errors import UserError


class AggregateError(UserError, ValueError):
    """Results that cannot be aggregated as asked (none yet, an unknown baseline, a malformed
    table): the user's to fix, so the CLI prints the message and exits with 2. Also a ValueError,
    as it always was, for callers that catch that."""
