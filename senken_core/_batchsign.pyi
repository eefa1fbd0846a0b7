"""Types of the optional C extension built from _batchsign.c (setup.py)."""

from array import array
from collections.abc import Sequence
from typing import TypeVar

_F = TypeVar("_F")

def bind(sign_addr: int, sha256_addr: int) -> None: ...
def sign_many(tag: bytes, bodies: Sequence[bytes], secret_key: bytes) -> list[bytes]: ...
def encode_many(chunks: Sequence[bytes], ints: array[int], k: int) -> list[bytes]: ...
def parse_frames(
    lines: Sequence[bytes], kinds: tuple[object, ...], frame_type: type[_F]
) -> list[_F | None]: ...
