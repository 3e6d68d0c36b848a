"""The errors every room shares. A ``UsageError`` ends a command with one line and
exit status 2; a ``RequestError`` is a request that cannot be answered, told in one
line. Its ``status`` uses HTTP's numbers, but only the web layer turns it into a
response: the rooms below raise the kind (``NotFound``, ``OverBudget``) and never
write a status themselves."""
from __future__ import annotations


ECHO_LIMIT = 120  # characters of a client's value that a reason repeats


def echo(value: str, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for a one-line reason, cut to ``limit`` characters with "…" after: a client that
    sends a 100 kB name gets a short line back, not its name (``repr`` keeps it on one line)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}…"


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


class RequestError(Exception):
    """A malformed request (400), with a one-line reason and the parameter at fault, if one is."""

    status = 400

    def __init__(self, reason: str, parameter: str | None = None):
        super().__init__(f"{parameter}: {reason}" if parameter else reason)
        self.reason = str(self)
        self.parameter = parameter


class NotFound(RequestError):
    """No such slide, view, level or tile (404)."""

    status = 404


class OverBudget(RequestError):
    """The request would synthesize more uncached blocks than it may (403), refused before any model run."""

    status = 403

    def __init__(self, needed: int, budget: int):
        super().__init__(f"would synthesize more than {budget} uncached blocks (the budget)")
        self.needed, self.budget = needed, budget


class Busy(RequestError):
    """No slot for this kind of work now (503 with Retry-After): the model's or the heavy renders'."""

    status = 503

    def __init__(self, reason: str, retry_after: float):
        super().__init__(reason)
        self.retry_after = retry_after


class Unavailable(Busy):
    """A slide that cannot be read now (503 with Retry-After): the read error, until it is retried."""
