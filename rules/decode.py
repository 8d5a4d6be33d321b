"""Content-Encoding decoding for body inspection (never for forwarding).

`make_decoder(header)` returns a `Decoder` for identity, gzip/x-gzip, deflate (zlib
or raw, as browsers accept) and br, or a comma list of them, or None when the
encoding is unknown. Output comes in pieces of at most about `PIECE` bytes, so one
small compressed chunk can never expand into a huge buffer in one step: a caller
that has seen enough stops iterating. The decoder keeps what it has not yet
decoded, so a later `decode()` call resumes where an abandoned iteration stopped.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Protocol

import brotli

PIECE = 64 * 1024  # decoded bytes produced at once (brotli may overshoot, to under 2 x PIECE)


class DecodeError(Exception):
    """The body is not valid data in its declared Content-Encoding."""


class Decoder(Protocol):
    def decode(self, chunk: bytes) -> Iterable[bytes]:
        """The decoded pieces of `chunk` (bytes as on the wire).

        Lazy (nothing is decoded until iterated); DecodeError, on corrupt data, is
        raised while iterating.
        """
        ...

    def flush(self) -> Iterable[bytes]:
        """The last pieces once the body has ended (call only after a complete body).

        Lazy like `decode`; raises DecodeError while iterating if the encoded stream
        stops early. A body without any bytes is accepted: it is empty, not cut short.
        """
        ...


def make_decoder(content_encoding: str | None) -> Decoder | None:
    """A decoder for a Content-Encoding header value; None: unknown or unsupported.

    A list such as "gzip, br" was applied in order, so it is decoded in reverse.
    Tokens are case-insensitive; "identity" and empty list elements are skipped.
    """
    tokens = [t.strip().lower() for t in (content_encoding or "").split(",")]
    stages: list[Decoder] = []
    for token in reversed(tokens):
        if token in ("", "identity"):
            continue
        factory = _FACTORIES.get(token)
        if factory is None:
            return None
        stages.append(factory())
    if not stages:
        return IDENTITY
    return stages[0] if len(stages) == 1 else _Chain(stages)


class _Identity:
    """No encoding: each chunk is its own single piece, not copied."""

    def decode(self, chunk: bytes) -> Iterable[bytes]:
        return (chunk,)

    def flush(self) -> Iterable[bytes]:
        return ()


IDENTITY: Decoder = _Identity()


class _Inflate:
    """gzip, zlib or raw deflate through zlib, in bounded pieces.

    `wbits` None means deflate of unknown framing: the first two bytes decide.
    """

    def __init__(self, wbits: int | None, members: bool) -> None:
        self._wbits = wbits
        self._members = members  # gzip: another member may follow one's end (RFC 1952)
        self._obj = None if wbits is None else zlib.decompressobj(wbits)
        self._pending = b""  # input that zlib has not consumed yet
        self._started = False

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        self._pending = self._pending + chunk if self._pending else chunk
        self._started = self._started or bool(chunk)
        return self._run()

    def flush(self) -> Iterator[bytes]:
        yield from self._run()
        if self._started and (self._obj is None or not self._obj.eof):
            raise DecodeError("the compressed body ends early")

    def _run(self) -> Iterator[bytes]:
        obj = self._obj or self._sniff()
        if obj is None:
            return  # deflate's first two bytes have not arrived yet
        try:
            while True:
                if obj.eof and self._pending:
                    obj = self._next_member()
                out = obj.decompress(self._pending, PIECE)
                # input beyond max_length waits in unconsumed_tail; after the end, in unused_data
                self._pending = obj.unused_data if obj.eof else obj.unconsumed_tail
                if out:
                    yield out
                if len(out) < PIECE and not (obj.eof and self._pending):
                    return
        except zlib.error as exc:
            raise DecodeError(f"corrupt compressed body: {exc}") from exc

    def _sniff(self) -> zlib._Decompress | None:
        """Choose zlib or raw deflate from the first two bytes, as browsers do."""
        if len(self._pending) < 2:
            return None
        cmf, flg = self._pending[0], self._pending[1]
        zlib_header = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
        self._wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
        self._obj = zlib.decompressobj(self._wbits)
        return self._obj

    def _next_member(self) -> zlib._Decompress:
        if not self._members:
            raise DecodeError("data after the end of the compressed body")
        assert self._wbits is not None  # set before any data was decompressed
        self._obj = zlib.decompressobj(self._wbits)
        return self._obj


class _Brotli:
    """br through the brotli module, in bounded pieces."""

    def __init__(self) -> None:
        self._obj = brotli.Decompressor()
        self._pending = b""  # input waiting until brotli has handed out its output
        self._started = False

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        self._pending = self._pending + chunk if self._pending else chunk
        self._started = self._started or bool(chunk)
        return self._run()

    def flush(self) -> Iterator[bytes]:
        yield from self._run()
        if self._started and not self._obj.is_finished():
            raise DecodeError("the compressed body ends early")

    def _run(self) -> Iterator[bytes]:
        obj = self._obj
        try:
            while True:
                # brotli takes new input only once it has handed out what it owes
                data = b""
                if self._pending and obj.can_accept_more_data():
                    data, self._pending = self._pending, b""
                out = obj.process(data, output_buffer_limit=PIECE)
                if out:
                    yield out
                if len(out) < PIECE and not self._pending:
                    return
        except brotli.error as exc:
            raise DecodeError(f"corrupt brotli body: {exc}") from exc


class _Chain:
    """Several encodings: `stages` in decoding order (the header's reverse)."""

    def __init__(self, stages: list[Decoder]) -> None:
        self._stages = stages

    def decode(self, chunk: bytes) -> Iterable[bytes]:
        pieces: Iterable[bytes] = (chunk,)
        for stage in self._stages:
            pieces = _through(stage, pieces)
        return pieces

    def flush(self) -> Iterable[bytes]:
        pieces: Iterable[bytes] = ()
        for stage in self._stages:
            # each stage decodes what the stage before it flushed, then flushes itself
            pieces = chain(_through(stage, pieces), stage.flush())
        return pieces


def _through(stage: Decoder, pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield from stage.decode(piece)


_FACTORIES: dict[str, Callable[[], Decoder]] = {
    "gzip": lambda: _Inflate(16 + zlib.MAX_WBITS, members=True),
    "x-gzip": lambda: _Inflate(16 + zlib.MAX_WBITS, members=True),
    "deflate": lambda: _Inflate(None, members=False),
    "br": _Brotli,
}
