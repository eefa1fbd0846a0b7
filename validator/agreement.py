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
4. **certify**: k signatures over one digest are a quorum certificate; whoever holds the
   readings publishes the certified window with its evidence. If no certificate is seen
   within the round's timeout, everyone moves to round ``r + 1`` and its leader.

The attestation is a function of the proposal alone (the haves it carries and the readings),
so every honest validator that signs a proposal signs the same bytes, whatever it missed or
received twice. Messages: canonical CBOR maps with a type ``t``; haves and proposals travel in
an envelope signed with the sender's validator key (:func:`seal`), so a leader can pass
others' haves on and a follower can check them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from senken_core import canonical
from senken_core.errors import EncodingError, PayloadError, SignatureError
from senken_core.reading import SignedReading
from senken_core.secp256k1 import ValidatorKey, recover_address

__all__ = ["AGREEMENT_TAG", "Fetch", "Have", "Proposal", "ReadingsReply", "Sign", "WindowKey",
           "agreed_readings", "agreed_rejected", "decode_message", "leader", "open_envelope",
           "seal"]

AGREEMENT_TAG = b"senken/agreement/v1\x00"
_V = 1
MAX_FETCH = 512  # sequence numbers one fetch may ask for


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
    value = _decode(data, "envelope")
    if set(value) != {"v", "msg", "sig"} or value["v"] != _V \
            or not isinstance(value["msg"], bytes) or not isinstance(value["sig"], bytes):
        raise PayloadError("envelope: expected {v: 1, msg: bytes, sig: bytes}")
    try:
        signer = recover_address(_digest(value["msg"]), value["sig"])
    except SignatureError as exc:
        raise PayloadError(f"envelope: {exc}") from None
    return value["msg"], signer


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
                                 "leaves": [[s, h] for s, h in self.leaves],
                                 "rejected": self.rejected})

    @classmethod
    def decode(cls, msg: bytes) -> Have:
        value = _decode(msg, "have")
        if value.get("t") != "have" or set(value) != {"t", "project", "device", "window_start",
                                                      "leaves", "rejected"}:
            raise PayloadError("have: unexpected fields")
        leaves = value["leaves"]
        rejected = value["rejected"]
        if not isinstance(leaves, list) or isinstance(rejected, bool) \
                or not isinstance(rejected, int) or not 0 <= rejected < 2**32:
            raise PayloadError("have: leaves must be a list and rejected a count")
        out: list[tuple[int, bytes]] = []
        for item in leaves:
            if (not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool)
                    or not isinstance(item[0], int) or item[0] < 0
                    or not isinstance(item[1], bytes) or len(item[1]) != 32):
                raise PayloadError("have: a leaf is [seq, 32-byte hash]")
            out.append((item[0], item[1]))
        if any(a[0] >= b[0] for a, b in itertools.pairwise(out)):
            raise PayloadError("have: leaves must be in increasing seq order")
        return cls(_key(value, "have"), tuple(out), rejected)


@dataclass(frozen=True, slots=True)
class SignedHave:
    have: Have
    signer: bytes
    envelope: bytes

    @classmethod
    def open(cls, envelope: bytes) -> SignedHave:
        msg, signer = open_envelope(envelope)
        return cls(Have.decode(msg), signer, envelope)


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
    def decode(cls, msg: bytes) -> Proposal:
        value = _decode(msg, "propose")
        if value.get("t") != "propose" or set(value) != {"t", "project", "device",
                                                         "window_start", "round", "haves",
                                                         "readings", "boundary"}:
            raise PayloadError("propose: unexpected fields")
        round_, haves, readings = value["round"], value["haves"], value["readings"]
        if isinstance(round_, bool) or not isinstance(round_, int) or not 0 <= round_ < 2**32:
            raise PayloadError("propose: round must be a small non-negative integer")
        if not isinstance(haves, list) or not all(isinstance(h, bytes) for h in haves):
            raise PayloadError("propose: haves must be a list of envelopes")
        if not isinstance(readings, list):
            raise PayloadError("propose: readings must be a list")
        boundary = value["boundary"]
        return cls(_key(value, "propose"), round_,
                   tuple(SignedHave.open(h) for h in haves if isinstance(h, bytes)),
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


Message = SignedHave | Proposal | Sign | Fetch | ReadingsReply


def decode_message(payload: bytes) -> tuple[Message, bytes | None]:
    """A message from a validator's agreement topic, and the envelope's signer (haves and
    proposals) or None. Raises PayloadError saying what is wrong, never anything else."""
    try:
        value = canonical.decode(payload)
    except EncodingError as exc:
        raise PayloadError(f"agreement: not canonical CBOR ({exc})") from None
    if not isinstance(value, dict):
        raise PayloadError("agreement: expected a map")
    if "sig" in value:  # an envelope: have or propose
        msg, signer = open_envelope(payload)
        kind = _decode(msg, "envelope").get("t")
        if kind == "have":
            return SignedHave(Have.decode(msg), signer, payload), signer
        if kind == "propose":
            return Proposal.decode(msg), signer
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
    if kind == "readings":
        readings = value.get("readings")
        if set(value) != {"t", "readings"} or not isinstance(readings, list):
            raise PayloadError("readings: expected a list")
        return ReadingsReply(tuple(_pair(r, "readings") for r in readings)), None
    raise PayloadError(f"agreement: unknown message type {kind!r}")


def agreed_readings(haves: Iterable[Have]) -> dict[int, bytes]:
    """seq -> leaf hash: the union of the haves' leaves. A seq listed with two different
    leaves (a device that signed two bodies under one sequence number) is left out."""
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
