"""The test vectors in docs/protocol.md are what the code produces."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from senken_core.frame import Frame, encode_frame
from senken_core.keys import READING_TAG, DeviceKey
from senken_core.reading import Reading

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()


def test_vectors_in_the_protocol_document() -> None:
    frame = Frame(41, 1764201600000, "elec_meter", (("energy_export_wh", 1523400),
                                                   ("power_w", 48250), ("voltage_dv", 2302)))
    assert encode_frame(frame).decode().rstrip() in DOC
    reading = Reading("pv-7-meter", 1000, 1764201600123, "elec_meter", 41, 1764201600000,
                      frame.values, bytes.fromhex("ab" * 32), 1500, 0)
    body = reading.canonical()
    assert body.hex() in DOC
    assert (READING_TAG + hashlib.sha256(body).digest()).hex() in DOC
    key = DeviceKey(bytes(range(32)))
    assert re.search(rf"public key {key.public_key.hex()}", DOC)
    assert re.search(rf"signature  {reading.sign(key).signature.hex()}", DOC)
