"""HTTP content negotiation as RFC 9110 reads it: tokens with q-values, never substring tests.

`Accept-Encoding: gzip;q=0` refuses gzip, and `Accept: application/json;q=0` refuses JSON; a
substring test reads both as a yes.
"""

from __future__ import annotations


def qualities(header: str) -> dict[str, float]:
    """Each listed media range or coding, lower-cased, with its q-value (the highest when listed twice)."""
    found: dict[str, float] = {}
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if not name:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        name = name.lower()
        found[name] = max(q, found.get(name, 0.0))
    return found


def media_quality(accept: str | None, media_type: str) -> float:
    """The q-value `accept` gives `media_type`, from its most specific matching range; 1 with no header."""
    if accept is None or not accept.strip():
        return 1.0
    listed = qualities(accept)
    kind = media_type.split("/", 1)[0]
    for candidate in (media_type, f"{kind}/*", "*/*"):
        if candidate in listed:
            return listed[candidate]
    return 0.0


def accepts_encoding(accept_encoding: str | None, coding: str) -> bool:
    """Whether `accept_encoding` allows `coding` (named, or by `*`, with a q-value above 0)."""
    if not accept_encoding:
        return False
    listed = qualities(accept_encoding)
    q = listed.get(coding, listed.get("*", 0.0))
    return q > 0
