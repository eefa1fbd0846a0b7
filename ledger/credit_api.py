"""The ledger API's credit endpoints: what the chain minted and retired, as mirrored, and the
ledger's own minting queue (``ledger.api`` includes them when the ledger mints)::

    GET /credits/mints?owner=&project=&limit=      AttestationMinted events, oldest first
    GET /credits/mints/{attestation_id}            the mint row and its event(s)
    GET /credits/queue?state=&limit=               the mint table, newest first, + counts
    GET /credits/retirements?holder=&limit=        Retired events
    GET /credits/balances/{address}                units per token id (from the transfers)
    GET /credits/batches                           token id -> project, vintage, methodology
    GET /chain/events?contract=&event=&limit=      governance, validator set, registry events

Addresses are 0x + 40 hex digits in any case (answered checksummed); token ids are 0x + 64 hex
digits; amounts and units are decimal strings (they are uint256 on chain).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_utils.address import to_checksum_address
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ledger.credit_store import STATES, CreditStore
from ledger.params import ParamError, parse_attestation_id, parse_identifier, parse_limit
from senken_core.credit_contracts import CONTRACT_NAMES

__all__ = ["credit_router", "parse_address"]

_HEX = frozenset("0123456789abcdefABCDEF")
_EVENT_NAME_MAX = 64


def parse_address(text: str | None, name: str) -> str | None:
    """An EVM address (0x + 40 hex digits, any case) -> checksummed, or None if absent."""
    if text is None:
        return None
    if len(text) != 42 or text[:2] not in ("0x", "0X") or not set(text[2:]) <= _HEX:
        raise ParamError(name, "must be an address: 0x and 40 hex digits")
    return to_checksum_address("0x" + text[2:].lower())


def credit_router(credits: CreditStore,
                  chain_status: Callable[[], dict[str, Any]] | None = None) -> APIRouter:
    """The endpoints above over ``credits``; plain functions (run on FastAPI's threads)."""
    router = APIRouter()

    @router.get("/credits/mints")
    def mints(owner: str | None = None, project: str | None = None,
              limit: str | None = None) -> dict[str, Any]:
        items = credits.mints(owner=parse_address(owner, "owner"),
                              project=parse_identifier(project, "project"),
                              limit=parse_limit(limit))
        return {"mints": items, "count": len(items)}

    @router.get("/credits/mints/{id_hex}")
    def mint(id_hex: str) -> JSONResponse:
        attestation_id = parse_attestation_id(id_hex)
        row = credits.mint_row(attestation_id)
        events = credits.mints(attestation_id=attestation_id)
        if row is None and not events:
            return JSONResponse({"error": f"attestation {id_hex} is not in the mint table"},
                                status_code=404)
        return JSONResponse({"mint": None if row is None else row.to_json(), "events": events})

    @router.get("/credits/queue")
    def queue(state: str | None = None, limit: str | None = None) -> dict[str, Any]:
        if state is not None and state not in STATES:
            raise ParamError("state", f"must be one of {', '.join(STATES)}")
        items = credits.mint_queue(state, parse_limit(limit))
        return {"counts": credits.mint_counts(), "mints": items, "count": len(items),
                "chain": chain_status() if chain_status is not None else None}

    @router.get("/credits/retirements")
    def retirements(holder: str | None = None, limit: str | None = None) -> dict[str, Any]:
        items = credits.retirements(holder=parse_address(holder, "holder"),
                                    limit=parse_limit(limit))
        return {"retirements": items, "count": len(items)}

    @router.get("/credits/balances/{address}")
    def balances(address: str) -> dict[str, Any]:
        who = parse_address(address, "address")
        assert who is not None
        held = credits.balances(who)
        return {"address": who, "balances": [{"token_id": t, "units": str(u)}
                                             for t, u in held.items()],
                "total_units": str(sum(held.values()))}

    @router.get("/credits/batches")
    def batches() -> dict[str, Any]:
        items = credits.batches()
        return {"batches": items, "count": len(items)}

    @router.get("/chain/events")
    def chain_events(contract: str | None = None, event: str | None = None,
                     limit: str | None = None) -> dict[str, Any]:
        if contract is not None and contract not in CONTRACT_NAMES:
            raise ParamError("contract", f"must be one of {', '.join(CONTRACT_NAMES)}")
        if event is not None and (not event.isascii() or not event.isalnum()
                                  or len(event) > _EVENT_NAME_MAX):
            raise ParamError("event", "must be an event name (letters and digits)")
        items = credits.chain_events(contract=contract, event=event, limit=parse_limit(limit))
        return {"events": items, "count": len(items)}

    return router
