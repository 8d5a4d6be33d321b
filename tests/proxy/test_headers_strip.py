"""proxy/headers.py client_response_headers: stripped names are memoised per
configuration (its globs tuple), so a reload's globs never see the old answers."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from proxy import headers as module
from proxy.headers import client_response_headers
from rules.paths import HeaderGlob


def _upstream(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def _names(globs: tuple[HeaderGlob, ...], *names: str) -> list[str]:
    out = client_response_headers(_upstream(*((n, "v") for n in names)), globs)
    return list(out.keys())


def test_stripped_names_and_hop_by_hop_are_removed_others_kept() -> None:
    globs = (HeaderGlob.compile("x-usage-*"),)
    given = ("Content-Type", "X-Usage-Tokens", "x-usage-model", "Keep-Alive", "X-Other")
    for _ in range(3):  # the memoised answer is the same as the first
        assert _names(globs, *given) == ["Content-Type", "X-Other"]


def test_a_reloaded_configuration_gets_its_own_answers() -> None:
    first = (HeaderGlob.compile("x-usage-*"),)
    second = (HeaderGlob.compile("x-other"),)
    assert _names(first, "X-Usage-Tokens", "X-Other") == ["X-Other"]
    assert _names(second, "X-Usage-Tokens", "X-Other") == ["X-Usage-Tokens"]
    assert _names((), "X-Usage-Tokens", "X-Other") == ["X-Usage-Tokens", "X-Other"]
    assert _names(first, "X-Usage-Tokens", "X-Other") == ["X-Other"]


def test_names_past_the_memo_bound_are_still_matched() -> None:
    globs = (HeaderGlob.compile("x-gone-*"),)
    many = [f"x-gone-{i}" for i in range(module._MAX_NAMES + 10)]
    kept = [f"x-kept-{i}" for i in range(20)]
    assert _names(globs, *many, *kept) == kept
    assert len(module._stripped_names(globs)) == module._MAX_NAMES


def test_many_configurations_keep_the_memo_table_bounded() -> None:
    for i in range(3 * module._MAX_MEMOS):
        globs = (HeaderGlob.compile(f"x-{i}"),)
        assert _names(globs, f"X-{i}", "X-Kept") == ["X-Kept"]
    assert len(module._MEMOS) <= module._MAX_MEMOS
