"""The ledger's HTTP API over the embedded store: what a buyer downloads verifies offline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.api import create_api
from ledger.offline import check_evidence
from ledger.params import (
    ParamError,
    parse_attestation_id,
    parse_identifier,
    parse_int,
    parse_limit,
)
from ledger.service import Ledger
from ledger.store import LedgerStore
from senken_core.evidence import CertifiedWindow
from senken_core.merkle import InclusionProof, verify_inclusion
from senken_core.reading import Reading
from tests.unit.test_ledger_support import DEVICE, PROJECT, T0, World


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def served(world: World, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[TestClient, Ledger]]:
    store = LedgerStore.open(f"sqlite:///{tmp_path_factory.mktemp('api') / 'ledger.db'}")
    ledger = Ledger(world.network, store)
    ledger.on_registry(world.record().to_wire(), DEVICE)
    for hour in range(3):
        assert ledger.on_certificate(world.certify(hour).to_wire()).result == "appended"
    ledger.on_certificate(b"garbage")
    client = TestClient(create_api(store, ledger,
                                   mqtt_status=lambda: {"connected": True, "messages": 5}))
    yield client, ledger
    store.close()


@pytest.fixture(scope="module")
def api(served: tuple[TestClient, Ledger]) -> TestClient:
    return served[0]


def test_attestations_are_listed_and_filtered(api: TestClient, world: World) -> None:
    items = api.get("/attestations").json()["attestations"]
    assert [a["log_index"] for a in items] == [0, 1, 2]
    first = items[0]
    assert first["id"] == world.certify(0).attestation.id.hex()
    assert (first["project"], first["device"], first["window_start"]) == (PROJECT, DEVICE, T0)
    assert first["quantity"] == 500 and first["co2e_mg"] == 500 * 700
    assert len(first["signers"]) == 3
    assert api.get("/attestations", params={"since": T0 + 3600, "limit": 1}).json()[
        "count"] == 1
    assert api.get("/attestations", params={"device": "pv-7-meter-9"}).json()["count"] == 0


def test_one_attestation_with_its_certificate(api: TestClient, world: World) -> None:
    window = world.certify(1)
    body = api.get(f"/attestations/{window.attestation.id.hex().upper()}").json()
    assert body["log_index"] == 1
    assert body["certificate"]["signatures"] == [s.hex() for s in window.certificate.signatures]
    assert body["certificate"]["signers"] == sorted(
        "0x" + k.address.hex() for k in world.validators[:3])
    assert len(body["log_entry"]["entry_hash"]) == 64


def test_downloaded_evidence_and_record_verify_offline(api: TestClient, world: World) -> None:
    att_id = world.certify(2).attestation.id.hex()
    evidence = api.get(f"/attestations/{att_id}/evidence")
    assert evidence.headers["content-type"] == "application/cbor"
    record = api.get(f"/attestations/{att_id}/registry")
    assert record.content == world.record().to_wire()
    checked = check_evidence(evidence.content, record.content, world.network)
    assert checked.window == world.certify(2)


def test_every_reading_has_a_proof_that_verifies_offline(api: TestClient, world: World) -> None:
    for seq in range(18):
        body = api.get(f"/proofs/{DEVICE}/{seq}").json()
        proof = InclusionProof.from_dict(body["proof"])
        leaf = bytes.fromhex(body["body"])
        verify_inclusion(leaf, proof, bytes.fromhex(body["readings_root"]),
                         tree_size=body["tree_size"])
        assert Reading.from_canonical(leaf).seq == seq
        # and the root and size are the certified attestation's
        evidence = CertifiedWindow.from_wire(api.get(
            f"/attestations/{body['attestation_id']}/evidence").content)
        assert evidence.attestation.readings_root.hex() == body["readings_root"]
        assert evidence.attestation.readings_accepted == body["tree_size"] == 6
    assert api.get(f"/proofs/{DEVICE}/18").status_code == 404


def test_telemetry_and_project_summary(api: TestClient) -> None:
    recent = api.get(f"/telemetry/{DEVICE}", params={"limit": 4}).json()["readings"]
    assert [r["seq"] for r in recent] == [14, 15, 16, 17]
    assert recent[0]["values"]["energy_export_wh"] == 50_000 + 1400
    since = api.get(f"/telemetry/{DEVICE}", params={"since_ms": (T0 + 7200) * 1000}).json()
    assert since["count"] == 6
    summary = api.get(f"/projects/{PROJECT}/summary").json()
    # 5 increments of 100 Wh per window: no window here came with its boundary reading
    assert summary["attestations"] == 3 and summary["readings"] == 18
    assert summary["quantity"] == 1500 and summary["co2e_mg"] == 1500 * 700
    assert api.get("/projects/other-project/summary").status_code == 404
    project = api.get(f"/projects/{PROJECT}/telemetry", params={"limit": 3}).json()
    assert [(r["device"], r["seq"]) for r in project["readings"]] == \
        [(DEVICE, 15), (DEVICE, 16), (DEVICE, 17)]
    assert api.get("/projects/other-project/telemetry").status_code == 404


def test_health_log_and_metrics(api: TestClient) -> None:
    health = api.get("/health").json()
    assert health["db"] == "ok" and health["mqtt_connected"] is True
    assert health["log_size"] == 3
    head = api.get("/log/head").json()
    assert head == {"size": 3, "head_hash": health["head_hash"]}
    assert api.get("/log/verify").json()["ok"] is True
    text = api.get("/metrics").text
    assert 'senken_ledger_certificates_total{outcome="appended"} 3.0' in text
    assert 'senken_ledger_certificates_total{outcome="refused:malformed"} 1.0' in text
    assert "senken_ledger_log_entries 3.0" in text


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/attestations/xyz", 400, "64 hex digits"),
    ("/attestations/" + "ab" * 32, 404, "no attestation"),
    ("/attestations/" + "ab" * 32 + "/evidence", 404, "no attestation"),
    ("/attestations?limit=0", 400, "limit"),
    ("/attestations?limit=abc", 400, "limit"),
    ("/attestations?since=-5", 400, "since"),
    ("/attestations?project=UPPER", 400, "project"),
    ("/proofs/pv-7-meter-1/-1", 400, "seq"),
    ("/proofs/x/1", 400, "device"),
    ("/telemetry/pv-7-meter-1?since_ms=1e9", 400, "since_ms"),
])
def test_bad_parameters_answer_4xx_with_a_message(api: TestClient, path: str, status: int,
                                                  words: str) -> None:
    answer = api.get(path)
    assert answer.status_code == status
    assert words in answer.json()["error"]


# what can be sent in a URL path at all (no control characters), and no path separators
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"),
                              exclude_characters="/?#%"), max_size=80)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts, texts, texts)
def test_any_query_answers_200_400_or_404_never_500(api: TestClient, a: str, b: str,
                                                    c: str) -> None:
    for path, params in ((f"/attestations/{a}", None), (f"/proofs/{b}/{c}", None),
                         ("/attestations", {"project": a, "since": b, "limit": c}),
                         (f"/telemetry/{a}", {"since_ms": b, "limit": c})):
        if path.endswith("/") or "/." in path:
            continue  # another route, or a path the client normalises
        assert api.get(path, params=params).status_code in (200, 400, 404)


@settings(max_examples=300)
@given(st.text(max_size=80) | st.from_regex(r"-?[0-9]{1,25}", fullmatch=True))
def test_parameter_parsers_return_a_value_or_a_param_error(text: str) -> None:
    for parse in (parse_attestation_id, lambda t: parse_identifier(t, "device"),
                  lambda t: parse_int(t, "seq"), parse_limit):
        try:
            value = parse(text)
        except ParamError as exc:
            assert str(exc)
            continue
        if parse is parse_limit:
            assert 1 <= value <= 1000  # type: ignore[operator]


def test_parameter_parsers_accept_what_they_document() -> None:
    assert parse_attestation_id("0x" + "AB" * 32) == b"\xab" * 32
    assert parse_int(" 42 ", "seq") == 42 and parse_int(None, "seq") is None
    assert parse_limit(None) == 100 and parse_limit("1000") == 1000
    assert parse_identifier("pv-7-meter-1", "device") == "pv-7-meter-1"
    with pytest.raises(ParamError, match="seq"):
        parse_int(str(2**63), "seq")
    with pytest.raises(ParamError):
        parse_int("١٢", "seq")  # other scripts' digits are not decimal numbers here


def test_an_api_without_a_ledger_still_serves_the_log(tmp_path: Path, world: World) -> None:
    store = LedgerStore.open(f"sqlite:///{tmp_path / 'l.db'}")
    client = TestClient(create_api(store))
    assert client.get("/health").json()["mqtt_connected"] is False
    assert client.get("/projects/anything-here/summary").json()["attestations"] == 0
    assert "senken_ledger_log_entries 0.0" in client.get("/metrics").text
    store.close()
