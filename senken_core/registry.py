"""The device registry: which devices exist, under which key, signed by their project's owner.

A :class:`DeviceRecord` says what validators trust about one device: its project, its Ed25519
public key, its sensor kind, the anomaly model its project requires, install data (location,
calibration date, technician) and whether it is revoked. The record's canonical bytes are
signed by the **project owner's** Ed25519 key under :data:`REGISTRY_TAG` (the same
``tag || SHA-256(body)`` scheme as readings, so a reading signature can never pass as a
registry entry or the reverse). The gateway stores and publishes signed records but cannot
make one: a compromised gateway cannot slip in a device.

:class:`DeviceRegistry` is the trust store every validator and the ledger keep. It knows each
project's owner key (from the network configuration, not from the gateway) and applies signed
records with these rules, each refusal a :class:`RegistryError` with a stable ``reason``:

* ``malformed``: the bytes do not decode to a record;
* ``unknown_project``: no owner key is configured for the record's project;
* ``bad_signature``: the owner's signature does not verify;
* ``device_taken``: the device id is registered under another project (ids are global, as
  the MQTT topics are);
* ``stale_version``: a version not above the one held (records only move forward, so an old
  record replayed on the broker cannot undo a newer one);
* ``revoked_final``: the device was revoked; nothing brings it back (enroll a new id).

Re-applying the record already held is a no-op (``apply`` returns ``False``), as MQTT QoS 1
and retained messages deliver records more than once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from senken_core import canonical
from senken_core.errors import EncodingError, SenkenError, SignatureError
from senken_core.keys import DeviceKey, verify_signature
from senken_core.reading import DEVICE_ID_PATTERN
from senken_core.sensors import SENSOR_KINDS

__all__ = ["REGISTRY_TAG", "DeviceRecord", "DeviceRegistry", "RegistryError",
           "SignedDeviceRecord"]

REGISTRY_TAG = b"senken/registry/v1\x00"
_SCHEMA = 1
_TEXT_MAX = 200


def _is_schema(value: object) -> bool:
    """``value`` is the schema version itself (``true`` equals 1 in Python, not on the wire)."""
    return type(value) is int and value == _SCHEMA


class RegistryError(SenkenError):
    """A registry record that is refused; ``reason`` is a stable code (module docstring)."""

    def __init__(self, reason: str, message: str, device: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.device = device


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device as its project's owner registered it. Raises ValueError when built
    invalid."""

    project: str
    device: str
    public_key: bytes  # Ed25519, 32 bytes
    kind: str  # a senken_core.sensors kind
    model_sha256: bytes  # the anomaly model the project requires
    version: int  # 1 for the enrollment, +1 for every later change (revocation included)
    revoked: bool = False
    location: str = ""  # e.g. "52.37,4.89" or a site name
    calibration_date: str = ""  # ISO 8601 date of the meter's last calibration
    technician: str = ""  # who installed it
    enrolled_at_ms: int = 0  # Unix ms of the enrollment

    def __post_init__(self) -> None:
        for name in ("project", "device"):
            value = getattr(self, name)
            if not isinstance(value, str) or not DEVICE_ID_PATTERN.match(value):
                raise ValueError(f"{name} must be 3-63 characters of a-z, 0-9 and '-'")
        for name in ("public_key", "model_sha256"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise ValueError(f"{name} must be 32 bytes")
        if not isinstance(self.kind, str) or self.kind not in SENSOR_KINDS:
            raise ValueError(f"unknown sensor kind {self.kind!r}")
        for name in ("version", "enrolled_at_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise ValueError(f"{name} must be a non-negative integer")
        if self.version < 1:
            raise ValueError("version starts at 1")
        if not isinstance(self.revoked, bool):
            raise ValueError("revoked must be true or false")
        for name in ("location", "calibration_date", "technician"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > _TEXT_MAX:
                raise ValueError(f"{name} must be text of at most {_TEXT_MAX} characters")

    def canonical(self) -> bytes:
        """The canonical CBOR bytes the owner signs."""
        body: dict[str, canonical.Value] = {f.name: getattr(self, f.name) for f in fields(self)}
        body["schema"] = _SCHEMA
        return canonical.encode(body)

    @classmethod
    def from_canonical(cls, body: bytes) -> DeviceRecord:
        """Decode :meth:`canonical` bytes; raises :class:`RegistryError` (``malformed``)."""
        try:
            value = canonical.decode(body)
        except EncodingError as exc:
            raise RegistryError("malformed", f"registry record: not canonical CBOR ({exc})") \
                from None
        if not isinstance(value, dict) or not _is_schema(value.get("schema")):
            raise RegistryError("malformed", "registry record: not a schema-1 map")
        names = {f.name for f in fields(cls)}
        given = set(value) - {"schema"}
        if given != names:
            raise RegistryError("malformed", f"registry record: missing fields "
                                f"{sorted(names - given)}, unknown fields {sorted(given - names)}")
        try:
            return cls(**{name: value[name] for name in names})  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise RegistryError("malformed", f"registry record: {exc}") from None

    def sign(self, owner_key: DeviceKey) -> SignedDeviceRecord:
        """This record signed by its project owner's key."""
        body = self.canonical()
        return SignedDeviceRecord(body, owner_key.sign(REGISTRY_TAG, body))


@dataclass(frozen=True, slots=True)
class SignedDeviceRecord:
    """A record's canonical bytes and the project owner's Ed25519 signature over them."""

    body: bytes
    signature: bytes

    def to_wire(self) -> bytes:
        """The MQTT payload (and API body) carrying this signed record."""
        return canonical.encode({"v": _SCHEMA, "record": self.body, "signature": self.signature})

    @classmethod
    def from_wire(cls, data: bytes) -> SignedDeviceRecord:
        """Raises :class:`RegistryError` (``malformed``) for anything but :meth:`to_wire`
        bytes."""
        try:
            value = canonical.decode(data)
        except EncodingError as exc:
            raise RegistryError("malformed", f"signed record: not canonical CBOR ({exc})") \
                from None
        if (not isinstance(value, dict) or set(value) != {"v", "record", "signature"}
                or not _is_schema(value["v"]) or not isinstance(value["record"], bytes)
                or not isinstance(value["signature"], bytes) or len(value["signature"]) != 64):
            raise RegistryError("malformed", "signed record: expected {v: 1, record: bytes, "
                                "signature: 64 bytes}")
        return cls(value["record"], value["signature"])

    def verify(self, owner_public_key: bytes) -> DeviceRecord:
        """The record, if the owner's signature holds; raises :class:`RegistryError`."""
        record = DeviceRecord.from_canonical(self.body)
        try:
            verify_signature(owner_public_key, REGISTRY_TAG, self.body, self.signature)
        except SignatureError:
            raise RegistryError("bad_signature", f"registry record for {record.device}: the "
                                f"signature is not by {record.project}'s owner",
                                record.device) from None
        return record


class DeviceRegistry:
    """The devices a validator (or the ledger) trusts. Not thread-safe."""

    def __init__(self, owners: Mapping[str, bytes]) -> None:
        """``owners``: project id -> the project owner's Ed25519 public key (32 bytes)."""
        self.owners = dict(owners)
        self._records: dict[str, DeviceRecord] = {}
        self._signed: dict[str, SignedDeviceRecord] = {}

    def apply(self, signed: SignedDeviceRecord) -> bool:
        """Apply a signed record; True if it changed the registry, False if it is the one
        already held. Raises :class:`RegistryError` (module docstring) and changes nothing."""
        record = DeviceRecord.from_canonical(signed.body)
        owner = self.owners.get(record.project)
        if owner is None:
            raise RegistryError("unknown_project", f"{record.device}: project {record.project} "
                                "has no owner key in this network's configuration",
                                record.device)
        signed.verify(owner)
        held = self._records.get(record.device)
        if held is not None:
            if held.project != record.project:
                raise RegistryError("device_taken", f"{record.device} is registered under "
                                    f"project {held.project}", record.device)
            if record == held:
                return False
            if held.revoked:
                raise RegistryError("revoked_final", f"{record.device} was revoked; enroll "
                                    "the device under a new id", record.device)
            if record.version <= held.version:
                raise RegistryError("stale_version", f"{record.device}: version "
                                    f"{record.version}, the registry holds {held.version}",
                                    record.device)
        self._records[record.device] = record
        self._signed[record.device] = signed
        return True

    def apply_all(self, records: Iterable[SignedDeviceRecord]) -> list[RegistryError]:
        """Apply each record; the refusals, in order (the others are applied)."""
        errors = []
        for signed in records:
            try:
                self.apply(signed)
            except RegistryError as exc:
                errors.append(exc)
        return errors

    def lookup(self, device: str) -> DeviceRecord | None:
        """The device's current record (revoked ones included), or None."""
        return self._records.get(device)

    def signed(self, device: str) -> SignedDeviceRecord | None:
        """The signed record behind :meth:`lookup`, to pass on as evidence."""
        return self._signed.get(device)

    def __len__(self) -> int:
        return len(self._records)
