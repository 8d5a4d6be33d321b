"""PostgreSQL URLs: checked when the configuration loads, shown without their password.

No driver import here: `meterproxy check` validates `storage.url` with it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def check_url(url: str) -> None:
    """Raises ValueError unless `url` is a postgresql:// (or postgres://) URL with a valid
    port, so that a bad setting fails at load, not at the first connection."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{redact(url)}: not a postgresql:// URL")
    try:
        parts.port  # noqa: B018 (urllib checks the port when it is read)
    except ValueError as exc:
        raise ValueError(f"{redact(url)}: {exc}") from None


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=userinfo.split(":", 1)[0] + at + host))
