"""A development chain on loopback: the in-process eth-tester (py-evm) served over JSON-RPC.

The embedded default chain (``[chain] url = "eth-tester"``) lives inside one process, so only
that process can reach it. The demo needs one chain that several parties use at once: the
deployer, the ledger's minter (another process), the project owner retiring credits, and
anyone checking with foundry's ``cast``. :class:`DevChain` gives them that: the same py-evm
chain, behind ``http://127.0.0.1:PORT`` (``senken chain dev-node``), nothing installed beyond
the ``chain`` extra. It is for development and demos: one lock serialises every request, the
state is in memory and gone when the process stops, and it listens on loopback only.

Requests are JSON-RPC 2.0 over HTTP POST, single or batched, answered by eth-tester's own
provider; a body that is not JSON-RPC gets a JSON-RPC error, never a traceback.
"""

from __future__ import annotations

import ast
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from senken_core.errors import SenkenError

__all__ = ["DevChain", "DevChainError"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024  # a contract deployment is well under 100 KB
MAX_BATCH = 1000


class DevChainError(SenkenError):
    """The development chain cannot start (eth-tester missing, port taken)."""


def _wire(value: Any) -> Any:
    """A result as JSON-RPC puts it: quantities as 0x hex, byte strings as 0x hex data (the
    provider gives Python ints and bytes; web3 over HTTP and cast expect the wire form)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire(v) for v in value]
    return value


_CALL_METHODS = frozenset({"eth_call", "eth_estimateGas", "eth_sendTransaction",
                           "eth_createAccessList"})


_FEE_FIELDS = ("gasPrice", "maxFeePerGas", "maxPriorityFeePerGas")


def _call_object(param: Any, free: bool) -> Any:
    """A transaction object with ``input`` (the newer name, cast sends it) as ``data`` (the
    name eth-tester takes); for ``eth_call`` (``free``) without fee fields and without the
    zero sender cast puts for "no sender": eth-tester makes a call's sender afford its gas,
    which a read on a JSON-RPC node never has to."""
    if not isinstance(param, dict):
        return param
    param = dict(param)
    if "input" in param:
        data = param.pop("input")
        param.setdefault("data", data)
    if free:
        for name in _FEE_FIELDS:
            param.pop(name, None)
        if int(str(param.get("from", "0x0")), 16) == 0:  # "no sender" (cast's 0x0)
            param.pop("from", None)  # the provider fills in a funded account
    return param


_REVERTED = "execution reverted"


def _revert_data(exc: Exception) -> bytes | None:
    """The revert data of eth-tester's TransactionFailed, which carries it only as the repr of
    the bytes in its message ("execution reverted: b'...'"); None for any other error."""
    if type(exc).__name__ != "TransactionFailed" or not exc.args:
        return None
    text = str(exc.args[0])
    if not text.startswith(_REVERTED):
        return None
    rest = text[len(_REVERTED):].removeprefix(":").strip()
    if not rest:
        return b""
    try:
        data = ast.literal_eval(rest)
    except (ValueError, SyntaxError):
        return None
    return data if isinstance(data, bytes) else None


def _error(request_id: object, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class DevChain:
    """eth-tester's chain behind a loopback JSON-RPC endpoint (start, then ``url``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 block_time_s: float | None = 1.0) -> None:
        """``block_time_s``: mine an (empty) block this often, as a real chain produces
        them, so that block time follows the clock (eth-tester mines only on transactions;
        the credit contract mints a window only once a block is past its end). None: only
        on transactions."""
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise DevChainError("the development chain listens on loopback only")
        try:
            import eth_tester  # noqa: F401 (the backend, only imported by the provider later)
            from web3 import EthereumTesterProvider
        except ImportError as exc:  # pragma: no cover - the chain extra is a dev dependency
            raise DevChainError("the development chain needs the chain extra: "
                                "pip install 'senken[chain]'") from exc
        from web3 import Web3

        self.provider = EthereumTesterProvider()
        # the provider's own request and result formatting (hex in, Python values out), and
        # none of web3's client-side middleware: what a JSON-RPC node does with a request
        w3 = Web3(self.provider, middleware=[])
        self._request = self.provider.request_func(w3, w3.middleware_onion)
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._block_time_s = block_time_s
        self._stopping = threading.Event()
        self._miner: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise DevChainError("not started")
        port = self._server.server_address[1]
        return f"http://{self._host}:{port}"

    def answer(self, body: bytes) -> Any:
        """The JSON-RPC reply to one HTTP body (single request or batch)."""
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(None, -32700, "parse error: the body is not JSON")
        if isinstance(message, list):
            if not message or len(message) > MAX_BATCH:
                return _error(None, -32600, f"a batch holds 1 to {MAX_BATCH} requests")
            return [self._one(m) for m in message]
        return self._one(message)

    def _one(self, request: object) -> dict[str, Any]:
        if not isinstance(request, dict):
            return _error(None, -32600, "a request is a JSON object")
        request_id = request.get("id")
        method, params = request.get("method"), request.get("params", [])
        if not isinstance(method, str) or not isinstance(params, list):
            return _error(request_id, -32600, "method must be a string, params a list")
        if method in _CALL_METHODS:
            params = [_call_object(p, free=method == "eth_call") for p in params]
        try:
            with self._lock:
                reply = dict(self._request(method, params))
        except Exception as exc:  # eth-tester raises on bad params: an error reply, not a 500
            reverted = _revert_data(exc)
            if reverted is not None:  # as geth answers a revert: code 3 and the revert data
                out = _error(request_id, 3, "execution reverted")
                out["error"]["data"] = "0x" + reverted.hex()
                return out
            log.debug("%s failed: %s", method, exc)
            return _error(request_id, -32602, f"{method}: {exc}")
        if "result" in reply:
            return {"jsonrpc": "2.0", "id": request_id, "result": _wire(reply["result"])}
        error = reply.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            out = _error(request_id, error["code"], str(error.get("message", "")))
            if "data" in error:  # a revert's data: the custom error a client decodes
                out["error"]["data"] = _wire(error["data"])
            return out
        return _error(request_id, -32603, str(error))

    @property
    def chain_id(self) -> int:
        return int(self._call("eth_chainId", []))

    def fund(self, address: str, wei: int = 10**21) -> None:
        """Send ``wei`` of play money to ``address`` from the chain's first (unlocked)
        account, and wait for it."""
        [source] = self._call("eth_accounts", [])[:1]
        tx = self._call("eth_sendTransaction", [{"from": source, "to": address,
                                                 "value": hex(wei), "gas": hex(21_000)}])
        receipt = self._call("eth_getTransactionReceipt", [_wire(tx)])
        if not receipt or receipt.get("status") != 1:
            raise DevChainError(f"funding {address} failed")

    def _call(self, method: str, params: list[Any]) -> Any:
        """One request through the provider, its result as Python values."""
        with self._lock:
            reply = dict(self._request(method, params))
        if "error" in reply:
            raise DevChainError(f"{method}: {reply['error']}")
        return reply["result"]

    def start(self) -> str:
        """Listen (a free port if 0) and serve on a thread; returns the URL."""
        chain = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    length = -1
                if not 0 < length <= MAX_BODY_BYTES:
                    self._send(413 if length > MAX_BODY_BYTES else 400,
                               _error(None, -32600, "a JSON-RPC body of 1 byte to 8 MiB"))
                    return
                self._send(200, chain.answer(self.rfile.read(length)))

            def _send(self, status: int, reply: Any) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("dev chain: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        except OSError as exc:
            raise DevChainError(f"cannot listen on {self._host}:{self._port}: "
                                f"{exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="dev-chain",
                                        daemon=True)
        self._thread.start()
        if self._block_time_s is not None:
            self._miner = threading.Thread(target=self._mine, args=(self._block_time_s,),
                                           name="dev-chain-miner", daemon=True)
            self._miner.start()
        return self.url

    def _mine(self, every_s: float) -> None:
        while not self._stopping.wait(every_s):
            try:
                self._call("evm_mine", [])
            except DevChainError as exc:  # pragma: no cover - eth-tester does not refuse it
                log.warning("dev chain: mining a block failed: %s", exc)

    def stop(self) -> None:
        self._stopping.set()
        if self._miner is not None:
            self._miner.join(5)
            self._miner = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
