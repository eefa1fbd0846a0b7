"""Device keys (Ed25519) and domain-separated signatures.

A signature never covers raw bytes: it covers ``tag || SHA-256(canonical bytes)``, where the
tag names the kind of message (:data:`READING_TAG`, ...). A signature made for one kind of
message can therefore never verify as another (see docs/protocol.md, "Signatures").

:meth:`DeviceKey.sign_many` signs a batch in one call that does not hold the GIL, through the
optional C extension ``senken_core._batchsign`` bound to the libsodium that PyNaCl ships (the
same primitive :meth:`DeviceKey.sign` calls); where the extension was not built it signs one
at a time. :data:`NATIVE_BATCH_SIGNING` says which.

:func:`native_verify_detached` is the verifying side for readings: one reading's signature
checked with the signer's key prepared once (``senken_core._edverify``: ~2.5x libsodium's single
verification for a key seen before, with libsodium's verdict on every input), else
``_batchsign``'s plain libsodium call, else None (then :func:`verify_signature`).

Key files hold the 32-byte Ed25519 seed in hex under a one-line header, are created with mode
0600 in one atomic step, and are refused when group or others can read them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing

from senken_core.errors import KeyFileError, SignatureError

__all__ = [
    "NATIVE_BATCH_SIGNING",
    "READING_TAG",
    "DeviceKey",
    "check_key_file",
    "native_verify_detached",
    "native_verify_many",
    "read_key_file",
    "signing_message",
    "verify_signature",
    "write_key_file",
]

READING_TAG = b"senken/reading/v1\x00"
_HEADER = "senken-ed25519-seed-v1"


try:  # the optional C extension (setup.py); bound to libsodium on first use
    from senken_core import _batchsign
except ImportError:
    _batchsign = None  # type: ignore[assignment]

NATIVE_BATCH_SIGNING = _batchsign is not None


@functools.cache
def _native_sign_many() -> Callable[[bytes, Sequence[bytes], bytes], list[bytes]] | None:
    """``_batchsign.sign_many`` bound to PyNaCl's libsodium (once), or None without it."""
    if _batchsign is None:
        return None
    _batchsign.bind(*_sodium_addresses("crypto_sign_detached", "crypto_hash_sha256"))
    return _batchsign.sign_many


def _sodium_addresses(*names: str) -> list[int]:
    import nacl._sodium

    sodium = ctypes.CDLL(nacl._sodium.__file__)
    addresses: list[int] = []
    for name in names:
        function = getattr(sodium, name, None)
        address = None if function is None else ctypes.cast(function, ctypes.c_void_p).value
        if not address:
            raise RuntimeError(f"PyNaCl's libsodium does not export {name}")
        addresses.append(address)
    return addresses


VerifyDetached = Callable[[bytes, bytes, bytes, bytes], "bytes | None"]


@functools.cache
def native_verify_detached() -> VerifyDetached | None:
    """``verify_detached(tag, public_key, body, signature)``: SHA-256 of ``body`` if
    ``signature`` is ``public_key``'s over ``tag || SHA-256(body)``, else None; raises
    ValueError for a tag over 64 bytes or a key or signature of the wrong size, TypeError for
    anything but bytes. None where neither extension is built."""
    try:
        from senken_core import _edverify
    except ImportError:
        pass
    else:
        _edverify.bind(*_sodium_addresses(
            "crypto_sign_verify_detached", "crypto_hash_sha256", "crypto_hash_sha512",
            "crypto_core_ed25519_scalar_reduce", "crypto_core_ed25519_is_valid_point"))
        return _edverify.verify_detached
    if _batchsign is None or not hasattr(_batchsign, "verify_detached"):
        return None
    _batchsign.bind_verify(*_sodium_addresses("crypto_sign_verify_detached",
                                              "crypto_hash_sha256"))
    return _batchsign.verify_detached


VerifyMany = Callable[[bytes, bytes, list[bytes], list[bytes]], "list[bytes | None]"]


@functools.cache
def native_verify_many() -> VerifyMany | None:
    """``verify_many(tag, public_key, bodies, signatures)``: per item what
    :func:`native_verify_detached` gives, None too for an item that is not bytes with a 64-byte
    signature (callers check those themselves). One call per batch of one device's readings:
    with ``_edverify`` one field inversion serves the whole batch. None without an extension."""
    single = native_verify_detached()
    if single is None:
        return None
    try:
        from senken_core import _edverify  # bound by native_verify_detached
    except ImportError:
        pass
    else:
        if single is _edverify.verify_detached:
            return _edverify.verify_many

    def one_by_one(tag: bytes, public_key: bytes, bodies: list[bytes],
                   signatures: list[bytes]) -> list[bytes | None]:
        if len(bodies) != len(signatures):
            raise ValueError("not as many signatures as bodies")
        return [single(tag, public_key, body, signature)
                if type(body) is bytes and type(signature) is bytes and len(signature) == 64
                else None for body, signature in zip(bodies, signatures, strict=True)]

    return one_by_one


def signing_message(tag: bytes, body: bytes) -> bytes:
    """The bytes actually signed for ``body`` under domain ``tag``."""
    return tag + hashlib.sha256(body).digest()


def verify_signature(public_key: bytes, tag: bytes, body: bytes, signature: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is ``public_key``'s over (tag, body)."""
    try:
        nacl.signing.VerifyKey(public_key).verify(signing_message(tag, body), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise SignatureError("signature does not verify against the device key") from exc


def check_key_file(path: Path, init_command: str = "senken edge init") -> os.stat_result:
    """Stat ``path`` and refuse it unless it is a regular file only its owner can read."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(path, f"does not exist; run `{init_command}` first") from None
    except PermissionError:
        raise KeyFileError(path, "permission denied; run the agent as the key's owner") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(path, "is not a regular file")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise KeyFileError(
            path, f"is readable by group or others (mode {mode:04o}); fix it with: chmod 600 {path}"
        )
    return info


def write_key_file(path: Path, header: str, secret: bytes, what: str) -> None:
    """Write ``header`` and ``secret`` (hex) to a new file of mode 0600, fsynced; refuses to
    overwrite an existing one (a key is never replaced by accident)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"{header}\n{secret.hex()}\n".encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(path, f"already exists; a {what} is never overwritten") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path, header: str, size: int, init_command: str, what: str) -> bytes:
    """The secret of a file written by :func:`write_key_file`; :class:`KeyFileError` for a
    missing, group- or world-readable, corrupt or foreign file."""
    check_key_file(path, init_command)
    try:
        found, hex_secret = path.read_text("ascii").split()
        secret = bytes.fromhex(hex_secret)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(path, "is not a Senken key file (corrupt?)") from None
    if found != header or len(secret) != size:
        raise KeyFileError(path, f"is not a Senken {what} file")
    return secret


class DeviceKey:
    """An Ed25519 signing key that lives on one device and never leaves it."""

    __slots__ = ("_secret", "_signing", "public_key")

    def __init__(self, seed: bytes) -> None:
        self._signing = nacl.signing.SigningKey(seed)
        self._secret: bytes = self._signing._signing_key  # libsodium's 64-byte secret key
        self.public_key: bytes = bytes(self._signing.verify_key)

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    def sign(self, tag: bytes, body: bytes) -> bytes:
        """The 64-byte signature over ``tag || SHA-256(body)``."""
        # The binding skips PyNaCl's SignedMessage wrapper; the agent signs every reading.
        signed: bytes = nacl.bindings.crypto_sign(signing_message(tag, body), self._secret)
        return signed[:64]

    def sign_many(self, tag: bytes, bodies: Sequence[bytes]) -> list[bytes]:
        """``[self.sign(tag, body) for body in bodies]``, in one GIL-free call where the native
        extension is built (Ed25519 signatures are deterministic: the same bytes either way)."""
        sign_many = _native_sign_many()
        if sign_many is not None:
            return sign_many(tag, bodies, self._secret)
        return [self.sign(tag, body) for body in bodies]

    def save(self, path: Path) -> None:
        """Write the key to ``path`` with mode 0600; refuses to overwrite an existing key."""
        write_key_file(path, _HEADER, bytes(self._signing), "device key")

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        """Load a key saved by :meth:`save`, refusing files that others could read."""
        return cls(read_key_file(path, _HEADER, 32, "senken edge init", "Ed25519 key"))
