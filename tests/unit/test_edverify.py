"""The validator's Ed25519 check with prepared keys (senken_core/_edverify.c) gives libsodium's
verdict on every input: valid signatures, any bit changed, non-canonical S, the identity as R
(which the comb's arithmetic alone would accept), R or the key with a small-order component,
small-order keys, and more keys than its cache holds.

``fast_only`` is the extension's own arithmetic without libsodium's second look at a refusal,
so these tests see the new code's answer, not libsodium's; ``verify_message`` is what the
validator gets. Curve points for the crafted cases come from a plain-integer reference below.
"""

from __future__ import annotations

import hashlib
import secrets
import sys

import nacl.bindings
import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senken_core import _edverify
from senken_core.keys import READING_TAG, native_verify_detached, signing_message

# ---- a plain-integer reference of the curve (affine; test-only, slow, obviously correct) ----

P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
L = 2**252 + 27742317777372353535851937790883648493
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)


def mul(k: int, a: Point) -> Point:
    out = IDENTITY
    while k:
        if k & 1:
            out = add(out, a)
        a, k = add(a, a), k >> 1
    return out


def decode(b: bytes) -> Point | None:
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if x * x % P != x2:
        x = x * SQRT_M1 % P
    if x * x % P != x2:
        return None
    if x & 1 != b[31] >> 7:
        x = P - x
    return x, y


def encode(a: Point) -> bytes:
    x, y = a
    return (y | (x & 1) << 255).to_bytes(32, "little")


B = decode(bytes([0x58]) + bytes([0x66]) * 31)
assert B is not None


def torsion8() -> Point:
    """A point of order 8 (L times a curve point outside the prime-order subgroup)."""
    y = 2
    while True:
        a = decode(y.to_bytes(32, "little"))
        if a is not None:
            t = mul(L, a)
            if mul(4, t) != IDENTITY:
                return t
        y += 1


T8 = torsion8()


def challenge(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def sign_with(a: int, public: bytes, message: bytes, r_point: Point, r: int) -> bytes:
    """A signature (R, S = r + h a) over ``message`` for any R the caller chose."""
    rb = encode(r_point)
    return rb + ((r + challenge(rb, public, message) * a) % L).to_bytes(32, "little")


def libsodium(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, public)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def bound() -> None:
    assert native_verify_detached() is _edverify.verify_detached  # binds the extension


def seeds() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=32, max_size=32)


@settings(max_examples=300, deadline=None)
@given(seed=seeds(), message=st.binary(max_size=96))
def test_every_valid_signature_is_accepted_by_the_prepared_key(seed: bytes, message: bytes
                                                                ) -> None:
    key = nacl.signing.SigningKey(seed)
    public, signature = bytes(key.verify_key), key.sign(message).signature
    assert _edverify.fast_only(public, message, signature) == (True, True)
    assert _edverify.verify_message(public, message, signature)


@settings(max_examples=400, deadline=None)
@given(seed=seeds(), message=st.binary(min_size=1, max_size=96),
       where=st.sampled_from(["signature", "message", "key"]), index=st.integers(0, 511))
def test_one_changed_bit_gets_libsodiums_verdict(seed: bytes, message: bytes, where: str,
                                                 index: int) -> None:
    key = nacl.signing.SigningKey(seed)
    public, signature = bytes(key.verify_key), key.sign(message).signature
    parts = {"signature": bytearray(signature), "message": bytearray(message),
             "key": bytearray(public)}
    target = parts[where]
    bit = index % (8 * len(target))
    target[bit // 8] ^= 1 << (bit % 8)
    pk, m, sig = bytes(parts["key"]), bytes(parts["message"]), bytes(parts["signature"])
    expected = libsodium(pk, m, sig)
    fast, _prepared = _edverify.fast_only(pk, m, sig)
    assert not fast or expected  # never accepts what libsodium refuses
    assert _edverify.verify_message(pk, m, sig) == expected


def test_the_readings_check_returns_the_body_digest_only_for_a_valid_signature() -> None:
    key = nacl.signing.SigningKey(b"\x11" * 32)
    public = bytes(key.verify_key)
    body = b"a reading body" * 10
    signature = key.sign(signing_message(READING_TAG, body)).signature
    verify = native_verify_detached()
    assert verify is not None
    assert verify(READING_TAG, public, body, signature) == hashlib.sha256(body).digest()
    assert verify(READING_TAG, public, body + b"!", signature) is None
    assert verify(b"senken/other/v1\x00", public, body, signature) is None
    with pytest.raises(ValueError):
        verify(READING_TAG, public[:31], body, signature)
    with pytest.raises(TypeError):
        verify(READING_TAG, bytearray(public), body, signature)  # type: ignore[arg-type]


def test_a_non_canonical_s_is_refused() -> None:
    key = nacl.signing.SigningKey(b"\x12" * 32)
    public, message = bytes(key.verify_key), b"m"
    signature = key.sign(message).signature
    s = int.from_bytes(signature[32:], "little") + L  # same value mod L, not canonical
    forged = signature[:32] + s.to_bytes(32, "little")
    assert not libsodium(public, message, forged)
    assert _edverify.fast_only(public, message, forged) == (False, True)
    assert not _edverify.verify_message(public, message, forged)


def test_the_identity_as_r_is_refused_though_the_equation_holds() -> None:
    a = secrets.randbelow(L - 1) + 1
    public = encode(mul(a, B))
    message = b"identity"
    r_bytes = encode(IDENTITY)
    h = challenge(r_bytes, public, message)
    forged = r_bytes + (h * a % L).to_bytes(32, "little")  # S B - h A = identity = R
    assert add(mul(h * a % L, B), mul(L - h, mul(a, B))) == IDENTITY  # the equation holds
    assert not libsodium(public, message, forged)  # libsodium: R of small order
    assert _edverify.fast_only(public, message, forged) == (False, True)
    assert not _edverify.verify_message(public, message, forged)


@pytest.mark.parametrize("order_of_t", [2, 4, 8])
def test_r_with_a_small_order_component_is_refused(order_of_t: int) -> None:
    t = mul(8 // order_of_t, T8)
    a, r = secrets.randbelow(L - 1) + 1, secrets.randbelow(L - 1) + 1
    public, message = encode(mul(a, B)), b"mixed R"
    forged = sign_with(a, public, message, add(mul(r, B), t), r)  # valid only cofactored
    assert not libsodium(public, message, forged)
    assert _edverify.fast_only(public, message, forged) == (False, True)
    assert not _edverify.verify_message(public, message, forged)


def test_a_key_with_a_small_order_component_is_left_to_libsodium() -> None:
    """libsodium accepts some signatures under such a key (it checks the key is not of small
    order, not that it is in the prime-order subgroup): the prepared path must not judge it."""
    a = secrets.randbelow(L - 1) + 1
    mixed = add(mul(a, B), T8)
    public, message = encode(mixed), b"mixed key"
    for _attempt in range(256):  # h = 0 mod 8 with probability 1/8: then S B - h A' = r B = R
        r = secrets.randbelow(L - 1) + 1
        signature = sign_with(a, public, message, mul(r, B), r)
        if challenge(signature[:32], public, message) % 8 == 0:
            break
    else:
        pytest.fail("no h divisible by 8 in 256 attempts")
    assert libsodium(public, message, signature)
    assert _edverify.fast_only(public, message, signature) == (False, False)
    assert _edverify.verify_message(public, message, signature)


@pytest.mark.parametrize("point", [IDENTITY, T8, mul(2, T8), mul(4, T8)])
def test_small_order_keys_are_refused(point: Point) -> None:
    public = encode(point)
    signature = encode(B) + (1).to_bytes(32, "little")
    assert _edverify.fast_only(public, b"x", signature) == (False, False)
    assert not _edverify.verify_message(public, b"x", signature)


def test_more_keys_than_the_cache_holds_are_all_checked_right() -> None:
    keys = [nacl.signing.SigningKey(i.to_bytes(32, "little")) for i in range(1, 2501)]
    signed = [(bytes(k.verify_key), k.sign(b"reading").signature) for k in keys]
    for _round in range(2):  # the second round finds most keys evicted by others
        for public, signature in signed:
            assert _edverify.fast_only(public, b"reading", signature) == (True, True)
            assert not _edverify.verify_message(public, b"reading!", signature)


def _reading_batch(key: nacl.signing.SigningKey, bodies: list[bytes]) -> list[bytes]:
    return [key.sign(signing_message(READING_TAG, body)).signature for body in bodies]


@settings(max_examples=150, deadline=None)
@given(seed=seeds(), bodies=st.lists(st.binary(max_size=300), min_size=0, max_size=40),
       flips=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 511)), max_size=6))
def test_a_batch_gets_the_verdict_of_each_signature_alone(
        seed: bytes, bodies: list[bytes], flips: list[tuple[int, int]]) -> None:
    key = nacl.signing.SigningKey(seed)
    public = bytes(key.verify_key)
    signatures = _reading_batch(key, bodies)
    for item, bit in flips:  # some signatures changed
        if item < len(signatures):
            changed = bytearray(signatures[item])
            changed[bit // 8] ^= 1 << (bit % 8)
            signatures[item] = bytes(changed)
    one_by_one = [_edverify.verify_detached(READING_TAG, public, b, s)
                  for b, s in zip(bodies, signatures, strict=True)]
    assert _edverify.verify_many(READING_TAG, public, bodies, signatures) == one_by_one
    assert one_by_one == [hashlib.sha256(b).digest()
                          if libsodium(public, signing_message(READING_TAG, b), s) else None
                          for b, s in zip(bodies, signatures, strict=True)]


def test_a_batch_with_crafted_and_unusable_items() -> None:
    a = secrets.randbelow(L - 1) + 1
    public = encode(mul(a, B))
    bodies = [b"valid %d" % i for i in range(6)]
    digest_message = [signing_message(READING_TAG, body) for body in bodies]

    def honest(i: int) -> bytes:
        r = secrets.randbelow(L - 1) + 1
        return sign_with(a, public, digest_message[i], mul(r, B), r)

    identity_r = encode(IDENTITY)
    h = challenge(identity_r, public, digest_message[2])
    r = secrets.randbelow(L - 1) + 1
    signatures: list[object] = [
        honest(0),
        honest(1)[:32] + (int.from_bytes(honest(1)[32:], "little") + L).to_bytes(32, "little"),
        identity_r + (h * a % L).to_bytes(32, "little"),
        sign_with(a, public, digest_message[3], add(mul(r, B), T8), r),
        honest(4)[:63],  # not 64 bytes: not checked
        bytearray(honest(5)),  # not bytes: not checked
    ]
    got = _edverify.verify_many(READING_TAG, public, bodies, signatures)  # type: ignore[arg-type]
    assert got == [hashlib.sha256(bodies[0]).digest(), None, None, None, None, None]
    with pytest.raises(ValueError):
        _edverify.verify_many(READING_TAG, public, bodies, signatures[:5])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _edverify.verify_many(READING_TAG, public, tuple(bodies), signatures)  # type: ignore[arg-type]


def test_a_batch_under_a_key_left_to_libsodium() -> None:
    public = encode(add(mul(secrets.randbelow(L - 1) + 1, B), T8))
    signatures = [encode(B) + bytes(32), bytes(64)]
    assert _edverify.verify_many(READING_TAG, public, [b"x", b"y"], signatures) == [None, None]


def test_a_key_is_prepared_once_it_has_been_used_enough() -> None:
    """A key seen now and then is left to libsodium (a table costs about ten verifications);
    the 32nd verification under it prepares it. The verdicts never depend on which."""
    key = nacl.signing.SigningKey(b"\x13" * 32)
    public = bytes(key.verify_key)
    body = b"now and then"
    signature = key.sign(signing_message(READING_TAG, body)).signature
    _edverify.forget_keys()  # no use counted yet for any key
    prepared_before, _ = _edverify.key_counts()
    for _ in range(31):
        assert _edverify.verify_detached(READING_TAG, public, body, signature) is not None
    assert _edverify.key_counts()[0] == prepared_before  # libsodium's, 31 times
    assert _edverify.verify_detached(READING_TAG, public, body + b"!", signature) is None
    assert _edverify.key_counts()[0] == prepared_before + 1  # the 32nd use prepared it
    assert _edverify.verify_detached(READING_TAG, public, body, signature) is not None
    bodies = [b"%d" % i for i in range(40)]
    other = nacl.signing.SigningKey(b"\x14" * 32)
    signatures = _reading_batch(other, bodies)
    assert _edverify.verify_many(READING_TAG, bytes(other.verify_key), bodies, signatures) == [
        hashlib.sha256(b).digest() for b in bodies]  # a batch of 40 prepares it at once
    assert _edverify.key_counts()[0] == prepared_before + 2


def test_without_this_extension_the_plain_libsodium_binding_gives_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where _edverify was not built (the two extensions are optional, each on its own),
    readings are checked one by one through _batchsign's libsodium call: same results."""
    import senken_core
    from senken_core import _batchsign, keys

    key = nacl.signing.SigningKey(b"\x15" * 32)
    public = bytes(key.verify_key)
    bodies = [b"a", b"b", b"c"]
    signatures: list[bytes] = _reading_batch(key, bodies)
    signatures[1] = signatures[0]  # b's signature is a's
    expected = _edverify.verify_many(READING_TAG, public, bodies, signatures)
    monkeypatch.setitem(sys.modules, "senken_core._edverify", None)  # import fails
    monkeypatch.delattr(senken_core, "_edverify")
    keys.native_verify_detached.cache_clear()
    keys.native_verify_many.cache_clear()
    try:
        single, many = keys.native_verify_detached(), keys.native_verify_many()
        assert single is _batchsign.verify_detached and many is not None
        assert many(READING_TAG, public, bodies, signatures) == expected
        assert [single(READING_TAG, public, b, s) for b, s in zip(bodies, signatures,
                                                                   strict=True)] == expected
        with pytest.raises(ValueError):
            many(READING_TAG, public, bodies, signatures[:2])
    finally:
        monkeypatch.undo()
        keys.native_verify_detached.cache_clear()
        keys.native_verify_many.cache_clear()
    assert keys.native_verify_detached() is _edverify.verify_detached
