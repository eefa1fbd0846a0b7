"""A small network with real keys, for the ledger's tests: certified windows built the way
validators build them (readings signed by the device, the attestation from
``window_attestation``, k validators' secp256k1 signatures over its EIP-712 digest)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from senken_core.attestation import Attestation
from senken_core.evidence import CertifiedWindow, check_certified_window, window_attestation
from senken_core.keys import DeviceKey
from senken_core.network import NetworkConfig
from senken_core.quorum import QuorumCertificate
from senken_core.reading import Reading, SignedReading
from senken_core.registry import DeviceRecord, SignedDeviceRecord
from senken_core.secp256k1 import ValidatorKey
from senken_core.topics import DEFAULT_PREFIX

HOUR = 3600
T0 = 1_795_003_200  # a multiple of an hour
MODEL = b"\x22" * 32
EF = 700
PROJECT = "pv-plant-7"
DEVICE = "pv-7-meter-1"


class World:
    """Four validators (k = 3), one project, one device; everything deterministic."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, device: str = DEVICE) -> None:
        self.validators = [ValidatorKey(bytes([i + 1]) * 32) for i in range(4)]
        self.outsider = ValidatorKey(b"\x77" * 32)
        self.owner = DeviceKey(b"\x05" * 32)
        self.device = device
        self.device_key = DeviceKey(b"\x09" * 32)
        self.prefix = prefix
        self.network = NetworkConfig.from_dict(self.network_dict())
        self.domain = self.network.domain()
        self.methodology = self.network.projects[0].methodology_terms()

    def network_dict(self) -> dict[str, object]:
        return {
            "topic_prefix": self.prefix, "chain_id": 31337,
            "credit_contract": "0x" + "42" * 20, "threshold": 3,
            "validators": ["0x" + k.address.hex() for k in self.validators],
            "projects": [{"id": PROJECT, "owner_key": self.owner.public_key.hex(),
                          "window_seconds": HOUR, "grid_ef_g_per_kwh": EF,
                          "model_sha256": MODEL.hex()}],
        }

    def write_network(self, path: Path) -> Path:
        d = self.network_dict()
        p = d["projects"][0]  # type: ignore[index]
        validators = ", ".join(f'"{v}"' for v in d["validators"])  # type: ignore[attr-defined]
        path.write_text(
            f'topic_prefix = "{self.prefix}"\nchain_id = 31337\n'
            f'credit_contract = "{d["credit_contract"]}"\nthreshold = 3\n'
            f"validators = [{validators}]\n\n[[projects]]\n"
            f'id = "{PROJECT}"\nowner_key = "{p["owner_key"]}"\nwindow_seconds = {HOUR}\n'
            f'grid_ef_g_per_kwh = {EF}\nmodel_sha256 = "{MODEL.hex()}"\n', "utf-8")
        return path

    def record(self, version: int = 1, revoked: bool = False,
               owner: DeviceKey | None = None) -> SignedDeviceRecord:
        return DeviceRecord(PROJECT, self.device, self.device_key.public_key, "elec_meter", MODEL,
                            version, revoked).sign(owner or self.owner)

    def reading(self, seq: int, ts_s: int, energy_wh: int | None = None,
                ppm: int = 0) -> Reading:
        wh = 50_000 + 100 * seq if energy_wh is None else energy_wh
        return Reading(self.device, seq, ts_s * 1000, "elec_meter", seq + 1, ts_s * 1000,
                       (("energy_export_wh", wh), ("power_w", 1000), ("voltage_dv", 2300)),
                       MODEL, ppm, 0)

    def window_readings(self, hour: int, per_hour: int = 6, first_seq: int | None = None
                        ) -> list[Reading]:
        """``per_hour`` readings of window ``hour`` (T0 + hour h), seq numbered on."""
        start = T0 + hour * HOUR
        first = hour * per_hour if first_seq is None else first_seq
        step = HOUR // per_hour
        return [self.reading(first + i, start + i * step) for i in range(per_hour)]

    def attest(self, readings: Sequence[Reading], hour: int, *, rejected: int = 0,
               boundary: Reading | None = None) -> Attestation:
        return window_attestation(
            project=PROJECT, device=self.device, window_start=T0 + hour * HOUR,
            window_seconds=HOUR, methodology=self.methodology, model_hash=MODEL,
            readings=[(r, r.canonical()) for r in readings], boundary=boundary,
            rejected=rejected)

    def sign(self, att: Attestation, keys: Sequence[ValidatorKey] | None = None
             ) -> tuple[bytes, ...]:
        chosen = sorted(self.validators[:3] if keys is None else keys, key=lambda k: k.address)
        return tuple(k.sign_digest(att.digest(self.domain)) for k in chosen)

    def certify(self, hour: int, readings: Sequence[Reading] | None = None, *,
                keys: Sequence[ValidatorKey] | None = None, rejected: int = 0,
                boundary: Reading | None = None, **changes: object) -> CertifiedWindow:
        """The certified window of ``hour``; ``changes`` alter the attestation before the
        validators sign it (validators fooled or faulty)."""
        readings = self.window_readings(hour) if readings is None else list(readings)
        att = self.attest(readings, hour, rejected=rejected, boundary=boundary)
        if changes:
            att = replace(att, **changes)  # type: ignore[arg-type]
        signed = tuple(r.sign(self.device_key) for r in readings)
        return CertifiedWindow(QuorumCertificate(att, self.sign(att, keys)), signed,
                               None if boundary is None else boundary.sign(self.device_key))

    def with_reading(self, window: CertifiedWindow, i: int, signed: SignedReading
                     ) -> CertifiedWindow:
        readings = list(window.readings)
        readings[i] = signed
        return replace(window, readings=tuple(readings))


def test_a_built_window_passes_the_evidence_check() -> None:
    world = World()
    window = world.certify(0)
    signers = check_certified_window(window, world.network.validator_set(), world.domain,
                                     lambda d: world.device_key.public_key,
                                     world.methodology)
    assert len(signers) == 3
    assert window.attestation.quantity == 500  # 5 increments of 100 Wh
    assert CertifiedWindow.from_wire(window.to_wire()) == window
