"""Request-path normalisation and the two glob languages of the config.

`normalize_path` turns a request path as received into the form rules match on:
percent-decoded (except an encoded slash), dot segments resolved, repeated slashes
merged. `PathGlob` matches such a path (rules[].match.path, customers.public_paths);
`HeaderGlob` matches a lower-cased header name (proxy.strip_response_headers).
Both compile to one regular expression at load, so matching is a single call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A run of percent escapes is decoded together so that multi-byte UTF-8 survives.
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_ENCODED_SLASH = re.compile(r"%2[Ff]")
_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}")


def normalize_path(raw: str) -> str:
    """The path rules match on: decoded, dot segments resolved, `//` merged.

    `raw` is the path part of the request target as received (no query). Every
    percent escape is decoded except `%2F`, which stays as the text "%2F" so it never
    splits a segment; escapes that are malformed or not UTF-8 stay as text. "." and
    ".." segments are resolved (never above the root), a trailing slash is kept, and
    the result always starts with "/". Never raises.
    """
    if raw.startswith("/") and "%" not in raw and "//" not in raw and "/." not in raw:
        return raw  # the common case: nothing to do
    decoded = _ESCAPES.sub(_decode_run, raw) if "%" in raw else raw
    return _resolve(decoded)


def _decode_run(m: re.Match[str]) -> str:
    # Decode the pieces between encoded slashes; those stay as canonical "%2F" text.
    pieces = _ENCODED_SLASH.split(m.group(0))
    return "%2F".join(_decode_utf8(piece) for piece in pieces)


def _decode_utf8(escapes: str) -> str:
    try:
        return bytes.fromhex(escapes.replace("%", "")).decode("utf-8")
    except UnicodeDecodeError:
        return escapes  # not UTF-8: matching the raw text is the least surprising


def _resolve(path: str) -> str:
    """Resolve dot segments and merge empty ones (RFC 3986 5.2.4, plus `//` merging)."""
    out: list[str] = []
    segments = path.split("/")
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    # "/a/b/" and "/a/b/.." both name a directory: keep the trailing slash (RFC 3986).
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


@dataclass(frozen=True, slots=True)
class PathGlob:
    """A compiled path glob: `*` one segment, `**` zero or more, `{name}` captures one.

    `*` inside other text (as in `*.json`) matches any characters within one segment.
    Matching is case-sensitive and runs on a path from `normalize_path`.
    """

    pattern: str
    regex: re.Pattern[str]
    names: tuple[str, ...]

    @classmethod
    def compile(cls, pattern: str) -> PathGlob:
        """Compile `pattern`; ValueError says what is wrong with it."""
        if not pattern.startswith("/"):
            raise ValueError(f"path glob {pattern!r} must start with '/'")
        segments = pattern[1:].split("/")
        names: list[str] = []
        parts = [
            _segment_regex(segment, i == len(segments) - 1, names, pattern)
            for i, segment in enumerate(segments)
        ]
        return cls(pattern, re.compile("".join(parts)), tuple(names))

    def match(self, path: str) -> dict[str, str] | None:
        """The captures by name ({} when the glob has none), or None: no match."""
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        return dict(zip(self.names, m.groups(), strict=True)) if self.names else {}


def _segment_regex(segment: str, last: bool, names: list[str], pattern: str) -> str:
    """The regex for "/segment"; `names` collects capture names in group order."""
    if segment == "**":
        # At the end also match "/v1" and "/v1/"; in the middle, whole segments only.
        return "(?:/.*)?" if last else "(?:/[^/]+)*"
    if "**" in segment:
        raise ValueError(f"path glob {pattern!r}: '**' must be a whole segment")
    capture = _CAPTURE.fullmatch(segment)
    if capture:
        name = capture.group(1)
        if name in names:
            raise ValueError(f"path glob {pattern!r}: capture {{{name}}} appears twice")
        names.append(name)
        return "/([^/]+)"
    if "{" in segment or "}" in segment:
        raise ValueError(f"path glob {pattern!r}: {_brace_problem(segment)}")
    if segment == "*":
        return "/[^/]+"
    if not segment and not last:
        raise ValueError(f"path glob {pattern!r}: empty segment ('//' never matches)")
    return "/" + "[^/]*".join(re.escape(text) for text in segment.split("*"))


def _brace_problem(segment: str) -> str:
    opened = segment.find("{")
    closed = segment.find("}", max(opened, 0))
    if opened >= 0 and closed < 0:
        return "'{' is not closed"
    if opened < 0 or segment.find("}") < opened:
        return "'}' without a '{'"
    return "a capture must be a whole segment: {name}, name of letters, digits, _ and -"


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


@dataclass(frozen=True, slots=True)
class HeaderGlob:
    """A header-name glob such as `x-usage-*`: `*` matches any run of characters."""

    pattern: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str) -> HeaderGlob:
        """Compile a glob over lower-cased header names; ValueError if it cannot match one."""
        lower = pattern.lower()
        if not _HEADER_NAME.fullmatch(lower):
            raise ValueError(f"header glob {pattern!r}: only header-name characters and '*'")
        return cls(lower, re.compile(".*".join(re.escape(text) for text in lower.split("*"))))

    def match(self, lower_name: str) -> bool:
        """Whether the (already lower-cased) header name matches."""
        return self.regex.fullmatch(lower_name) is not None
