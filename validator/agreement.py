"""The agreement protocol's messages and its deterministic rules (docs/protocol.md, section 7).

Per window ``W`` = (project, device, window start) validators run rounds ``r = 0, 1, ...``;
the leader of a round is :func:`leader` (a hash of the attestation id and the round, mod n):

1. **have**: when ``W`` is due (its end plus the grace period, by the validator's clock) each
   validator broadcasts a signed :class:`Have`: the Merkle leaf hashes of the readings of ``W``
   it accepted, and how many it rejected. It re-broadcasts it at every new round.
2. **propose**: the leader waits until it holds every reading listed in at least k haves
   (fetching what it lacks), then broadcasts a :class:`Proposal`: the signed haves it used, the
   readings that not every one of them listed, and the boundary reading (the device's reading
   just before the window, if it holds it).
3. **sign**: a follower checks the proposal (leader of that round, k distinct members' valid
   haves for ``W``), fetches what it lacks, verifies every reading as it verifies a reading
   from the device, computes the attestation with :func:`agreed_readings` and
   :func:`agreed_rejected` and :func:`senken_core.evidence.window_attestation`, signs its
   EIP-712 digest and broadcasts the signature; at most one signature per window and round.
4. **certify**: k signatures over one digest by members of the window's validator set
   (:class:`SignatureTally`; the set in force for the window, senken_core.membership) are a
   quorum certificate; the leader of the certified round publishes the certified window with
   its evidence, and another validator that holds the readings does so only if none appears
   within ``round_timeout_s`` (a backup, validator/settle.py). If no certificate is seen within
   the round's timeout, everyone moves to round ``r + 1`` and its leader. A validator that
   settled ``W`` answers a have for ``W`` that comes a round timeout or more after it settled
   (its sender is still agreeing: it missed the certificate, or a schedule change made it
   take ``W`` up again) with :class:`Certified`, the certificate without the readings.

The attestation is a function of the proposal alone (the haves it carries and the readings),
so every honest validator that signs a proposal signs the same bytes, whatever it missed or
received twice. Messages: canonical CBOR maps with a type ``t``; haves and proposals travel in
an envelope signed with the sender's validator key (:func:`seal`), so a leader can pass
others' haves on and a follower can check them. A have's leaves are one byte string of
40-byte (seq, leaf hash) records (:func:`encode_leaves`); opened haves are cached by their
envelope bytes (:class:`OpenedHaves`), so the copies inside proposals cost nothing.
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from senken_core import canonical
from senken_core.attestation import Attestation
from senken_core.eip712 import Domain
from senken_core.errors import EncodingError, PayloadError, SignatureError
from senken_core.quorum import QuorumCertificate, ValidatorSet
from senken_core.reading import SignedReading
from senken_core.secp256k1 import ValidatorKey, recover_address

__all__ = ["AGREEMENT_TAG", "Certified", "Fetch", "Have", "OpenedHaves", "Proposal",
           "ReadingsReply", "Sign",
           "SignatureTally", "WindowKey", "agreed_readings", "agreed_rejected", "decode_leaves",
           "decode_message", "encode_leaves", "leader", "open_envelope", "seal"]

AGREEMENT_TAG = b"senken/agreement/v1\x00"
_V = 1
MAX_FETCH = 512  # sequence numbers one fetch may ask for
LEAF_SIZE = 40  # a have's leaf on the wire: 8-byte big-endian seq || 32-byte leaf hash
_LEAF = struct.Struct(">Q32s")
_first = operator.itemgetter(0)


@dataclass(frozen=True, slots=True, order=True)
class WindowKey:
    project: str
    device: str
    window_start: int

    def fields(self) -> dict[str, canonical.Value]:
        return {"project": self.project, "device": self.device,
                "window_start": self.window_start}


def leader(members: Sequence[bytes], attestation_id: bytes, round_: int) -> bytes:
    """The leader of ``round_`` for the window with ``attestation_id``: the same at every
    validator, and spread over the members as rounds go on."""
    ordered = sorted(members)
    h = hashlib.sha256(attestation_id + round_.to_bytes(8, "big")).digest()
    return ordered[int.from_bytes(h, "big") % len(ordered)]


def _digest(msg: bytes) -> bytes:
    return hashlib.sha256(AGREEMENT_TAG + hashlib.sha256(msg).digest()).digest()


def seal(key: ValidatorKey, msg: bytes) -> bytes:
    """``msg`` in an envelope signed by ``key``."""
    return canonical.encode({"v": _V, "msg": msg, "sig": key.sign_digest(_digest(msg))})


def open_envelope(data: bytes) -> tuple[bytes, bytes]:
    """``(msg, signer address)``; raises PayloadError."""
    return _open(_decode(data, "envelope"))


def _open(value: dict[str, canonical.Value]) -> tuple[bytes, bytes]:
    msg, sig = value.get("msg"), value.get("sig")
    if len(value) != 3 or type(value.get("v")) is not int or value["v"] != _V \
            or not isinstance(msg, bytes) or not isinstance(sig, bytes):
        raise PayloadError("envelope: expected {v: 1, msg: bytes, sig: bytes}")
    try:
        signer = recover_address(_digest(msg), sig)
    except SignatureError as exc:
        raise PayloadError(f"envelope: {exc}") from None
    return msg, signer


def encode_leaves(leaves: Iterable[tuple[int, bytes]]) -> bytes:
    """A have's leaves on the wire: n x (8-byte big-endian seq || 32-byte leaf hash)."""
    pack = _LEAF.pack
    return b"".join([pack(seq, leaf) for seq, leaf in leaves])


def decode_leaves(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """The inverse of :func:`encode_leaves`, strictly: a whole number of 40-byte leaves, seqs
    strictly increasing. Raises PayloadError."""
    if not isinstance(data, bytes) or len(data) % LEAF_SIZE:
        raise PayloadError(f"have: leaves must be n x {LEAF_SIZE} bytes (seq || leaf hash)")
    leaves: tuple[tuple[int, bytes], ...] = tuple(_LEAF.iter_unpack(data))  # C, no copies
    seqs = list(map(_first, leaves))
    if not all(map(operator.lt, seqs, seqs[1:])):
        raise PayloadError("have: leaves must be in strictly increasing seq order")
    return leaves


def _decode(data: bytes, what: str) -> dict[str, canonical.Value]:
    try:
        value = canonical.decode(data)
    except EncodingError as exc:
        raise PayloadError(f"{what}: not canonical CBOR ({exc})") from None
    if not isinstance(value, dict):
        raise PayloadError(f"{what}: expected a map")
    return value


def _key(value: dict[str, canonical.Value], what: str) -> WindowKey:
    project, device, start = value.get("project"), value.get("device"), value.get("window_start")
    if not isinstance(project, str) or not isinstance(device, str) \
            or isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise PayloadError(f"{what}: project, device and window_start are required")
    return WindowKey(project, device, start)


def _pair(value: object, what: str) -> SignedReading:
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], bytes)
            or not isinstance(value[1], bytes) or len(value[1]) != 64):
        raise PayloadError(f"{what}: a reading is [body, 64-byte signature]")
    return SignedReading(value[0], value[1])


@dataclass(frozen=True, slots=True)
class Have:
    """What one validator accepted of a window: (seq, leaf hash) sorted by seq; rejected."""

    key: WindowKey
    leaves: tuple[tuple[int, bytes], ...]
    rejected: int

    def encode(self) -> bytes:
        return canonical.encode({"t": "have", **self.key.fields(),
                                 "leaves": encode_leaves(self.leaves),
                                 "rejected": self.rejected})

    @classmethod
    def decode(cls, msg: bytes) -> Have:
        return cls._from_value(_decode(msg, "have"))

    @classmethod
    def _from_value(cls, value: dict[str, canonical.Value]) -> Have:
        if value.get("t") != "have" or value.keys() != _HAVE_FIELDS:
            raise PayloadError("have: unexpected fields")
        leaves = value["leaves"]
        rejected = value["rejected"]
        if not isinstance(leaves, bytes) or type(rejected) is not int \
                or not 0 <= rejected < 2**32:
            raise PayloadError("have: leaves must be bytes and rejected a count")
        return cls(_key(value, "have"), decode_leaves(leaves), rejected)


_HAVE_FIELDS = frozenset({"t", "project", "device", "window_start", "leaves", "rejected"})
_PROPOSAL_FIELDS = frozenset({"t", "project", "device", "window_start", "round", "haves",
                              "readings", "boundary"})


@dataclass(frozen=True, slots=True)
class SignedHave:
    have: Have
    signer: bytes
    envelope: bytes

    @classmethod
    def open(cls, envelope: bytes, cache: OpenedHaves | None = None) -> SignedHave:
        """The have in ``envelope`` and its signer; from ``cache`` if it was opened before
        (the same bytes: no second decode, no second signature recovery). Raises
        PayloadError."""
        if cache is not None:
            hit = cache.get(envelope)
            if hit is not None:
                return hit
        msg, signer = open_envelope(envelope)
        opened = cls(Have.decode(msg), signer, envelope)
        if cache is not None:
            cache.put(opened)
        return opened


class OpenedHaves:
    """A small LRU of opened have envelopes by their bytes: a have comes once from its sender
    and again inside the leader's proposal (and at each new round), byte for byte the same,
    so it is decoded and its signer recovered once."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._items: OrderedDict[bytes, SignedHave] = OrderedDict()
        self.hits = 0

    def get(self, envelope: bytes) -> SignedHave | None:
        hit = self._items.get(envelope)
        if hit is not None:
            self.hits += 1
            self._items.move_to_end(envelope)
        return hit

    def put(self, have: SignedHave) -> None:
        self._items[have.envelope] = have
        if len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class Proposal:
    key: WindowKey
    round: int
    haves: tuple[SignedHave, ...]
    readings: tuple[SignedReading, ...]
    boundary: SignedReading | None

    def encode(self) -> bytes:
        return canonical.encode({
            "t": "propose", **self.key.fields(), "round": self.round,
            "haves": [h.envelope for h in self.haves],
            "readings": [[r.body, r.signature] for r in self.readings],
            "boundary": None if self.boundary is None
            else [self.boundary.body, self.boundary.signature]})

    @classmethod
    def decode(cls, msg: bytes, cache: OpenedHaves | None = None) -> Proposal:
        return cls._from_value(_decode(msg, "propose"), cache)

    @classmethod
    def _from_value(cls, value: dict[str, canonical.Value],
                    cache: OpenedHaves | None) -> Proposal:
        if value.get("t") != "propose" or value.keys() != _PROPOSAL_FIELDS:
            raise PayloadError("propose: unexpected fields")
        round_, haves, readings = value["round"], value["haves"], value["readings"]
        if type(round_) is not int or not 0 <= round_ < 2**32:
            raise PayloadError("propose: round must be a small non-negative integer")
        if not isinstance(haves, list) or not all(isinstance(h, bytes) for h in haves):
            raise PayloadError("propose: haves must be a list of envelopes")
        if not isinstance(readings, list):
            raise PayloadError("propose: readings must be a list")
        key = _key(value, "propose")  # checked before any signature is recovered
        boundary = value["boundary"]
        return cls(key, round_,
                   tuple(SignedHave.open(h, cache) for h in haves),  # type: ignore[arg-type]
                   tuple(_pair(r, "propose") for r in readings),
                   None if boundary is None else _pair(boundary, "propose boundary"))


@dataclass(frozen=True, slots=True)
class Sign:
    """A validator's EIP-712 signature over an attestation (self-authenticating)."""

    attestation: bytes  # Attestation.to_wire()
    signature: bytes

    def encode(self) -> bytes:
        return canonical.encode({"t": "sign", "attestation": self.attestation,
                                 "signature": self.signature})


@dataclass(frozen=True, slots=True)
class Fetch:
    """Asks for readings of ``device`` by sequence number; ``target`` (or anyone) answers."""

    device: str
    seqs: tuple[int, ...]
    target: bytes | None

    def encode(self) -> bytes:
        return canonical.encode({"t": "fetch", "device": self.device, "seqs": list(self.seqs),
                                 "target": self.target})


@dataclass(frozen=True, slots=True)
class ReadingsReply:
    """Signed readings, as their devices signed them (self-authenticating)."""

    readings: tuple[SignedReading, ...]

    def encode(self) -> bytes:
        return canonical.encode({"t": "readings",
                                 "readings": [[r.body, r.signature] for r in self.readings]})


@dataclass(frozen=True, slots=True)
class Certified:
    """The certificate of a window the sender settled (attestation and signatures, without
    the readings), in answer to a have for that window from a validator that is still
    agreeing on it (self-authenticating: the receiver checks the signatures)."""

    attestation: bytes  # Attestation.to_wire()
    signatures: tuple[bytes, ...]

    def encode(self) -> bytes:
        return canonical.encode({"t": "certified", "attestation": self.attestation,
                                 "signatures": list(self.signatures)})


Message = SignedHave | Proposal | Sign | Fetch | ReadingsReply | Certified


def decode_message(payload: bytes, cache: OpenedHaves | None = None,
                   ) -> tuple[Message, bytes | None]:
    """A message from a validator's agreement topic, and the envelope's signer (haves and
    proposals) or None. Haves are looked up in and added to ``cache`` (a have seen before, on
    its own or inside a proposal, is not decoded again). Raises PayloadError saying what is
    wrong, never anything else."""
    if cache is not None:
        hit = cache.get(payload)
        if hit is not None:
            return hit, hit.signer
    try:
        value = canonical.decode(payload)
    except EncodingError as exc:
        raise PayloadError(f"agreement: not canonical CBOR ({exc})") from None
    if not isinstance(value, dict):
        raise PayloadError("agreement: expected a map")
    if "sig" in value:  # an envelope: have or propose
        msg, signer = _open(value)
        inner = _decode(msg, "envelope")
        kind = inner.get("t")
        if kind == "have":
            have = SignedHave(Have._from_value(inner), signer, payload)
            if cache is not None:
                cache.put(have)
            return have, signer
        if kind == "propose":
            return Proposal._from_value(inner, cache), signer
        raise PayloadError(f"agreement: unknown sealed message {kind!r}")
    kind = value.get("t")
    if kind == "sign":
        att, sig = value.get("attestation"), value.get("signature")
        if set(value) != {"t", "attestation", "signature"} or not isinstance(att, bytes) \
                or not isinstance(sig, bytes) or len(sig) != 65:
            raise PayloadError("sign: expected attestation bytes and a 65-byte signature")
        return Sign(att, sig), None
    if kind == "fetch":
        device, seqs, target = value.get("device"), value.get("seqs"), value.get("target")
        if (set(value) != {"t", "device", "seqs", "target"} or not isinstance(device, str)
                or not isinstance(seqs, list) or not 0 < len(seqs) <= MAX_FETCH
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                           for s in seqs)
                or not (target is None or (isinstance(target, bytes) and len(target) == 20))):
            raise PayloadError(f"fetch: expected a device, 1..{MAX_FETCH} seqs and a target")
        return Fetch(device, tuple(seqs), target), None  # type: ignore[arg-type]
    if kind == "certified":
        att, sigs = value.get("attestation"), value.get("signatures")
        if set(value) != {"t", "attestation", "signatures"} or not isinstance(att, bytes) \
                or not isinstance(sigs, list) or not 0 < len(sigs) <= 256 \
                or not all(isinstance(s, bytes) and len(s) == 65 for s in sigs):
            raise PayloadError("certified: expected attestation bytes and 1..256 65-byte "
                               "signatures")
        return Certified(att, tuple(sigs)), None  # type: ignore[arg-type]
    if kind == "readings":
        readings = value.get("readings")
        if set(value) != {"t", "readings"} or not isinstance(readings, list):
            raise PayloadError("readings: expected a list")
        return ReadingsReply(tuple(_pair(r, "readings") for r in readings)), None
    raise PayloadError(f"agreement: unknown message type {kind!r}")


def agreed_readings(haves: Iterable[Have]) -> dict[int, bytes]:
    """seq -> leaf hash: the union of the haves' leaves. A seq listed with two different
    leaves (a device that signed two bodies under one sequence number) is left out."""
    haves = list(haves)
    if haves and all(h.leaves == haves[0].leaves for h in haves[1:]):
        return dict(haves[0].leaves)  # the common case; a have's seqs are increasing
    union: dict[int, bytes] = {}
    conflicted: set[int] = set()
    for have in haves:
        for seq, leaf in have.leaves:
            held = union.setdefault(seq, leaf)
            if held != leaf:
                conflicted.add(seq)
    for seq in conflicted:
        del union[seq]
    return dict(sorted(union.items()))


def agreed_rejected(haves: Sequence[Have]) -> int:
    """The lower median of the haves' rejected counts: with at most f faulty haves among
    k = 2f + 1 it lies between two honest validators' counts."""
    counts = sorted(h.rejected for h in haves)
    return counts[(len(counts) - 1) // 2]


@dataclass(slots=True)
class _Signed:
    attestation: Attestation
    by: dict[bytes, bytes]  # signer -> signature


class SignatureTally:
    """Validators' signatures per attestation id and digest, until a window's set certifies one.

    Unlike :class:`senken_core.quorum.SignatureCollector`, which set counts is asked when a
    certificate is wanted, not fixed up front: the set of a window comes from the schedule
    (senken_core.membership), which may change while signatures wait, so a signature of a
    member of any set the node knows is kept and counted once the window's set has it. Pure;
    not thread-safe; at most ``size`` attestation ids are kept (the oldest go first)."""

    def __init__(self, domain: Domain, size: int = 100_000) -> None:
        self.domain = domain
        self.size = size
        self._slots: OrderedDict[bytes, dict[bytes, _Signed]] = OrderedDict()  # id -> digest

    def add(self, attestation: Attestation, signature: bytes, known: frozenset[bytes],
            ) -> str | None:
        """Keep one signature over ``attestation``; None if kept, else why it was not:
        ``bad_signature``, ``unknown_signer`` (not in ``known``) or ``duplicate``."""
        digest = attestation.digest(self.domain)
        try:
            signer = recover_address(digest, signature)
        except SignatureError:
            return "bad_signature"
        if signer not in known:
            return "unknown_signer"
        slot = self._slots.get(attestation.id)
        if slot is None:
            slot = self._slots[attestation.id] = {}
            while len(self._slots) > self.size:
                self._slots.popitem(last=False)
        signed = slot.get(digest)
        if signed is None:
            signed = slot[digest] = _Signed(attestation, {})
        if signer in signed.by:  # a QoS 1 duplicate (deterministic ECDSA: the same bytes)
            return "duplicate"
        signed.by[signer] = signature
        return None

    def certificate(self, attestation_id: bytes, validators: ValidatorSet,
                    ) -> tuple[QuorumCertificate, tuple[bytes, ...]] | None:
        """A certificate of ``attestation_id`` by ``validators`` and its signers: the first
        digest that k of its members signed, with the signatures of the k lowest addresses
        among them; None while no digest has k. Others' signatures are kept, not counted."""
        for signed in self._slots.get(attestation_id, {}).values():
            members = sorted(s for s in signed.by if s in validators.members)
            if len(members) >= validators.threshold:
                chosen = tuple(members[: validators.threshold])
                return QuorumCertificate(signed.attestation,
                                         tuple(signed.by[s] for s in chosen)), chosen
        return None

    def waiting(self) -> list[Attestation]:
        """One attestation per id still held (to look at again when the schedule changes)."""
        return [next(iter(slot.values())).attestation for slot in self._slots.values() if slot]

    def forget(self, attestation_id: bytes) -> None:
        """Drop a window's signatures (once it is settled), to bound memory."""
        self._slots.pop(attestation_id, None)

    def __len__(self) -> int:
        return len(self._slots)
