"""rules/paths.py: path normalisation, path globs and header globs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.paths import HeaderGlob, PathGlob, normalize_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/", "/"),
        ("", "/"),
        ("v1/x", "/v1/x"),
        ("/v1/../v1/x", "/v1/x"),
        ("/a//b", "/a/b"),
        ("//a///b//", "/a/b/"),
        ("/a/./b", "/a/b"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../..", "/"),
        ("/../../x", "/x"),
        ("/..", "/"),
        ("/a/b/", "/a/b/"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/..b/c", "/a/..b/c"),
        ("/a%2Fb/c", "/a%2Fb/c"),
        ("/a%2fb/c", "/a%2Fb/c"),
        ("/a/..%2Fb", "/a/..%2Fb"),
        ("/%7Euser", "/~user"),
        ("/%7euser", "/~user"),
        ("/caf%C3%A9", "/café"),
        ("/%2e%2e/x", "/x"),
        ("/a/%2E/b", "/a/b"),
        ("/v1/%2e%2e%2fadmin", "/v1/..%2Fadmin"),
        ("/%20a", "/ a"),
        ("/%zz/%", "/%zz/%"),
        ("/%4", "/%4"),
        ("/%FF", "/%FF"),
        ("/%41%2F%42", "/A%2FB"),
        ("/%252F", "/%2F"),
    ],
)
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


def test_normalize_path_fast_path_returns_the_same_object() -> None:
    raw = "/v1/chat/completions"
    assert normalize_path(raw) is raw


_segment = st.sampled_from(["a", "b", ".", "..", "", "%2F", "%2e", "%41", "x%2Fy", "%zz"])


@given(st.lists(_segment, max_size=8), st.booleans())
def test_normalize_path_is_idempotent_and_rooted(segments: list[str], trailing: bool) -> None:
    raw = "/" + "/".join(segments) + ("/" if trailing else "")
    once = normalize_path(raw)
    assert once.startswith("/")
    assert "//" not in once
    assert normalize_path(once) == once
    assert "/./" not in once + "/" and "/../" not in once + "/"


@pytest.mark.parametrize(
    ("pattern", "path", "captures"),
    [
        ("/v1/**", "/v1", {}),
        ("/v1/**", "/v1/", {}),
        ("/v1/**", "/v1/a/b", {}),
        ("/v1/**", "/v10", None),
        ("/v1/**", "/v2/a", None),
        ("/**", "/", {}),
        ("/**", "/anything/at/all/", {}),
        ("/a/**/b", "/a/b", {}),
        ("/a/**/b", "/a/x/y/b", {}),
        ("/a/**/b", "/a/x/y/c", None),
        ("/v1/*", "/v1/x", {}),
        ("/v1/*", "/v1/", None),
        ("/v1/*", "/v1", None),
        ("/v1/*", "/v1/x/y", None),
        ("/v1/*/z", "/v1/x/z", {}),
        ("/static/*.js", "/static/app.js", {}),
        ("/static/*.js", "/static/app.css", None),
        ("/static/*.js", "/static/a/b.js", None),
        ("/v1/models/{model}", "/v1/models/gpt-4o", {"model": "gpt-4o"}),
        ("/v1/models/{model}", "/v1/models/", None),
        ("/v1/models/{model}", "/v1/models/a/b", None),
        ("/v1/models/{model}", "/v1/models/a%2Fb", {"model": "a%2Fb"}),
        ("/o/{org}/p/{project-id}", "/o/acme/p/7", {"org": "acme", "project-id": "7"}),
        ("/o/{org}/**", "/o/acme", {"org": "acme"}),
        ("/V1/x", "/v1/x", None),
        ("/v1/x", "/v1/x", {}),
        ("/v1/x", "/v1/x/", None),
        ("/v1/x/", "/v1/x/", {}),
        ("/", "/", {}),
        ("/", "/a", None),
        ("/a.b/(c)+", "/a.b/(c)+", {}),
        ("/a.b", "/axb", None),
    ],
)
def test_path_glob_match(pattern: str, path: str, captures: dict[str, str] | None) -> None:
    assert PathGlob.compile(pattern).match(path) == captures


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("v1/**", "must start with '/'"),
        ("", "must start with '/'"),
        ("/v1/{model", "'{' is not closed"),
        ("/v1/{a/b}", "'{' is not closed"),
        ("/v1/model}", "'}' without a '{'"),
        ("/v1/x{id}", "a capture must be a whole segment"),
        ("/v1/{id}.json", "a capture must be a whole segment"),
        ("/v1/{}", "a capture must be a whole segment"),
        ("/v1/{a b}", "a capture must be a whole segment"),
        ("/v1/{id}/x/{id}", "capture {id} appears twice"),
        ("/v1/**x", "'**' must be a whole segment"),
        ("/v1/x**", "'**' must be a whole segment"),
        ("/a//b", "empty segment"),
    ],
)
def test_path_glob_rejects_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match="path glob") as info:
        PathGlob.compile(pattern)
    assert message in str(info.value)


def test_glob_matches_requests_after_normalisation() -> None:
    glob = PathGlob.compile("/v1/admin/**")
    assert glob.match(normalize_path("/v1/public/../admin/users")) == {}
    assert glob.match(normalize_path("/v1//admin")) == {}
    assert glob.match(normalize_path("/v1/%61dmin/x")) == {}
    assert glob.match(normalize_path("/v1%2Fadmin/x")) is None


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("x-usage-*", "x-usage-input-tokens", True),
        ("x-usage-*", "x-usage-", True),
        ("x-usage-*", "x-usag", False),
        ("x-usage-*", "y-x-usage-a", False),
        ("X-Usage-*", "x-usage-model", True),
        ("*", "anything", True),
        ("*-id", "x-request-id", True),
        ("*-id", "x-request-idx", False),
        ("x-*-tokens", "x-usage-output-tokens", True),
        ("server", "server", True),
        ("server", "servers", False),
        ("x.y", "xay", False),
    ],
)
def test_header_glob(pattern: str, name: str, matches: bool) -> None:
    assert HeaderGlob.compile(pattern).match(name) is matches


@pytest.mark.parametrize("pattern", ["", "x usage", "x-usage:", "x/y"])
def test_header_glob_rejects_non_names(pattern: str) -> None:
    with pytest.raises(ValueError, match="header glob"):
        HeaderGlob.compile(pattern)
