"""A settings ``ValidationError`` as ONE line, the way every process reports bad config.

pydantic's own text spans several lines per error and ends in a documentation URL; an
operator reading ``kubectl logs`` of a crash-looping pod wants ``field: what is wrong``.
Input values are echoed only for choice errors: other fields may hold secrets (a broker
URL with a password, a token), and the message already says what was expected.
"""

from __future__ import annotations

from pydantic import ValidationError

_ECHO_INPUT = {"literal_error", "enum"}


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in _ECHO_INPUT:
            msg = f"{msg} (got {str(err.get('input'))[:60]!r})"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
