"""rules/decode.py: Content-Encoding decoders for body inspection."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable, Iterable

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.decode import IDENTITY, PIECE, DecodeError, Decoder, make_decoder

# Compressible but not trivial: pieces of random hex, repeated.
PLAIN = random.Random(7).randbytes(2000).hex().encode() * 200  # 800 KB


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": raw_deflate,
    "br": brotli.compress,
    "gzip, br": lambda data: brotli.compress(gzip.compress(data)),
    "br, deflate": lambda data: zlib.compress(brotli.compress(data)),
    "identity, gzip": gzip.compress,
    "GZIP": gzip.compress,
}


def header(name: str) -> str:
    return "deflate" if name == "deflate-raw" else name


def decode_all(decoder: Decoder, chunks: Iterable[bytes], flush: bool = True) -> bytes:
    out = [piece for chunk in chunks for piece in decoder.decode(chunk)]
    if flush:
        out.extend(decoder.flush())
    return b"".join(out)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("chunk_size", [1, 13, 4096, 10**9])
def test_round_trip(name: str, chunk_size: int) -> None:
    blob = ENCODERS[name](PLAIN if chunk_size > 1 else PLAIN[:20_000])
    decoder = make_decoder(header(name))
    assert decoder is not None
    expected = PLAIN if chunk_size > 1 else PLAIN[:20_000]
    assert decode_all(decoder, split(blob, chunk_size)) == expected


@pytest.mark.parametrize("name", ["gzip", "deflate", "deflate-raw", "br", "gzip, br"])
def test_a_small_chunk_never_expands_into_one_huge_piece(name: str) -> None:
    plain = b"a" * 20_000_000
    decoder = make_decoder(header(name))
    assert decoder is not None
    sizes = [len(piece) for piece in decoder.decode(ENCODERS[name](plain))]
    assert sum(sizes) == len(plain)
    assert max(sizes) < 2 * PIECE  # brotli may overshoot its output limit a little


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "gzip, br"])
def test_an_abandoned_iteration_resumes_with_the_next_chunk(name: str) -> None:
    blob = ENCODERS[name](PLAIN)
    decoder = make_decoder(header(name))
    assert decoder is not None
    half = len(blob) // 2
    first = decoder.decode(blob[:half])
    got = [next(iter(first))]  # the caller saw enough for now and stopped
    got.extend(decoder.decode(blob[half:]))
    got.extend(decoder.flush())
    assert b"".join(got) == PLAIN


def test_identity_is_zero_copy() -> None:
    chunk = b'{"a": 1}'
    for value in (None, "", "identity", " Identity ", "identity, identity"):
        decoder = make_decoder(value)
        assert decoder is IDENTITY
        (piece,) = decoder.decode(chunk)
        assert piece is chunk
        assert list(decoder.flush()) == []


@pytest.mark.parametrize("value", ["compress", "zstd", "gzip, zstd", "x-compress", "gzip;q=1"])
def test_unknown_encodings_have_no_decoder(value: str) -> None:
    assert make_decoder(value) is None


@pytest.mark.parametrize(
    ("name", "blob"),
    [
        ("gzip", b"this is not gzip at all"),
        ("deflate", b"\x78\x9cnot deflate data"),
        ("br", b"\xff\xff\xff\xff not brotli"),
        ("deflate", zlib.compress(b"x") + b"trailing junk"),
        ("gzip", gzip.compress(b"x") + b"junk after the member"),
        ("br", brotli.compress(b"x") + b"junk"),
    ],
)
def test_corrupt_data_raises(name: str, blob: bytes) -> None:
    decoder = make_decoder(name)
    assert decoder is not None
    with pytest.raises(DecodeError):
        decode_all(decoder, [blob])


@pytest.mark.parametrize("name", ["gzip", "deflate", "deflate-raw", "br", "gzip, br"])
def test_a_truncated_stream_fails_at_flush_only(name: str) -> None:
    blob = ENCODERS[name](PLAIN[:50_000])
    decoder = make_decoder(header(name))
    assert decoder is not None
    partial = decode_all(decoder, [blob[: len(blob) - 4]], flush=False)
    assert PLAIN.startswith(partial)
    with pytest.raises(DecodeError, match="ends early"):
        list(decoder.flush())


def test_deflate_of_a_single_byte_is_cut_short() -> None:
    decoder = make_decoder("deflate")
    assert decoder is not None
    assert decode_all(decoder, [b"\x78"], flush=False) == b""
    with pytest.raises(DecodeError):
        list(decoder.flush())


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "gzip, br"])
def test_an_empty_body_is_empty_not_corrupt(name: str) -> None:
    decoder = make_decoder(name)
    assert decoder is not None
    assert decode_all(decoder, [b""]) == b""


def test_concatenated_gzip_members_decode_in_full() -> None:
    blob = gzip.compress(b"first ") + gzip.compress(b"second")
    decoder = make_decoder("gzip")
    assert decoder is not None
    assert decode_all(decoder, split(blob, 5)) == b"first second"


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["gzip", "deflate", "deflate-raw", "br", "gzip, br"]),
    plain=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_any_split_decodes_to_the_original(name: str, plain: bytes, cuts: list[int]) -> None:
    blob = ENCODERS[name](plain)
    points = sorted({c % (len(blob) + 1) for c in cuts})
    chunks = [blob[a:b] for a, b in zip([0, *points], [*points, len(blob)], strict=True)]
    decoder = make_decoder(header(name))
    assert decoder is not None
    assert decode_all(decoder, chunks) == plain
