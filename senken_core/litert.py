"""A minimal binding of LiteRT's C API (``libLiteRt.so``) through ctypes.

Why not the ``ai_edge_litert`` Python interpreter: it needs numpy and a 18 MB pybind module,
about 35 MB of resident memory on an edge device whose budget is 40 MB in all. The C library
ships in the same wheel; this module loads it directly and runs a model's signatures on plain
host-memory buffers. Nothing here imports numpy.

The C API of LiteRT has changed between releases (``LiteRtCreateModelFromBuffer`` gained an
environment argument), so the project pins ``ai-edge-litert`` exactly (pyproject.toml) and the
tests run every call below. What is used (LiteRT 2.3)::

    LiteRtCreateEnvironment(int n, const LiteRtEnvOption* opts, LiteRtEnvironment* env)
    LiteRtCreateModelFromBuffer(env, const void* data, size_t size, LiteRtModel* model)
    LiteRtCreateOptions(LiteRtOptions* opts); LiteRtSetOptionsHardwareAccelerators(opts, int)
    LiteRtCreateCompiledModel(env, model, opts, LiteRtCompiledModel* compiled)
    LiteRtGetNumModelSignatures(model, size_t* n); LiteRtGetModelSignature(model, i, sig*)
    LiteRtGetSignatureKey(sig, const char** key)
    LiteRtGetSignatureInputTensorByIndex(sig, i, LiteRtTensor*)   (and ...Output...)
    LiteRtGetRankedTensorType(tensor, LiteRtRankedTensorType*)   (treated as opaque bytes)
    LiteRtCreateTensorBufferFromHostMemory(type*, void* addr, size_t size, NULL, buffer*)
    LiteRtRunCompiledModel(compiled, sig, n_in, LiteRtTensorBuffer* in, n_out, ... out)

ctypes releases the GIL during each call, so an inference overlaps other threads' Python work.
"""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from senken_core.errors import ModelError

__all__ = ["LiteRtModel", "Signature", "find_library"]

_OK = 0
_HW_CPU = 1
_ALIGN = 64  # LITERT_HOST_MEMORY_BUFFER_ALIGNMENT
_TENSOR_TYPE_BYTES = 256  # LiteRtRankedTensorType is ~72 bytes; held opaque, with room to spare
_ENV_OPTION_MIN_LOG_SEVERITY = 25  # kLiteRtEnvOptionTagMinLoggerSeverity
_ANY_INT = 2  # kLiteRtAnyTypeInt
_LOG_ERROR = 3  # kLiteRtLogSeverityError: keep LiteRT's INFO lines off the agent's stderr

_vp = ctypes.c_void_p
_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


class _Any(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("int_value", ctypes.c_int64)]


class _EnvOption(ctypes.Structure):
    _fields_ = [("tag", ctypes.c_int), ("value", _Any)]


def find_library() -> Path:
    """Path of ``libLiteRt.so`` inside the installed ai-edge-litert package (not imported)."""
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("no TFLite runtime: install ai-edge-litert to score readings")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "libLiteRt.so"
        if path.is_file():
            return path
    raise ModelError("ai-edge-litert is installed but has no libLiteRt.so; reinstall it")


def _library() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            path = find_library()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise ModelError(f"cannot load the TFLite runtime {path}: {exc}") from None
            lib.LiteRtCreateModelFromBuffer.argtypes = [_vp, _vp, ctypes.c_size_t, _vp]
            lib.LiteRtCreateTensorBufferFromHostMemory.argtypes = [
                _vp, _vp, ctypes.c_size_t, _vp, _vp]
            lib.LiteRtRunCompiledModel.argtypes = [
                _vp, ctypes.c_size_t, ctypes.c_size_t, _vp, ctypes.c_size_t, _vp]
            lib.LiteRtGetSignatureKey.argtypes = [_vp, _vp]
            for name in ("LiteRtGetModelSignature", "LiteRtGetSignatureInputTensorByIndex",
                         "LiteRtGetSignatureOutputTensorByIndex"):
                getattr(lib, name).argtypes = [_vp, ctypes.c_size_t, _vp]
            _lib = lib
        return _lib


def _check(status: int, what: str) -> None:
    if status != _OK:
        raise ModelError(f"TFLite runtime: {what} failed (LiteRT status {status})")


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature of a compiled model, with its host-memory input and output buffers."""

    index: int
    key: str
    input: memoryview  # writable bytes of the input tensor
    output: memoryview  # bytes of the output tensor
    _inputs: ctypes.Array[ctypes.c_void_p]
    _outputs: ctypes.Array[ctypes.c_void_p]


class LiteRtModel:
    """A .tflite model compiled for the CPU, one input and one output per signature.

    ``run(sig)`` runs signature ``sig`` on the bytes currently in ``sig.input`` and leaves the
    result in ``sig.output``. Buffers are owned here and live as long as the object. Not
    thread-safe: one caller at a time per signature (the buffers are shared).
    """

    def __init__(self, blob: bytes, sizes: Callable[[str], tuple[int, int] | None]) -> None:
        """Compile ``blob``. ``sizes(key)`` gives a signature's (input, output) sizes in bytes,
        or None to leave that signature out. Raises :class:`ModelError`."""
        lib = _library()
        self._lib = lib
        self._blob = ctypes.create_string_buffer(blob, len(blob))  # must outlive the model
        env, model, opts, compiled = _vp(), _vp(), _vp(), _vp()
        quiet = _EnvOption(_ENV_OPTION_MIN_LOG_SEVERITY, _Any(_ANY_INT, _LOG_ERROR))
        _check(lib.LiteRtCreateEnvironment(1, ctypes.byref(quiet), ctypes.byref(env)),
               "creating the environment")
        _check(lib.LiteRtCreateModelFromBuffer(env, self._blob, len(blob), ctypes.byref(model)),
               "reading the model")
        _check(lib.LiteRtCreateOptions(ctypes.byref(opts)), "creating options")
        _check(lib.LiteRtSetOptionsHardwareAccelerators(opts, _HW_CPU), "selecting the CPU")
        _check(lib.LiteRtCreateCompiledModel(env, model, opts, ctypes.byref(compiled)),
               "compiling the model")
        self._handles = (env, model, opts, compiled)
        count = ctypes.c_size_t()
        _check(lib.LiteRtGetNumModelSignatures(model, ctypes.byref(count)), "listing signatures")
        wanted: list[tuple[int, ctypes.c_void_p, str, int, int]] = []
        for i in range(count.value):
            sig, raw_key = _vp(), ctypes.c_char_p()
            _check(lib.LiteRtGetModelSignature(model, i, ctypes.byref(sig)), "reading a signature")
            _check(lib.LiteRtGetSignatureKey(sig, ctypes.byref(raw_key)), "reading a signature key")
            name = (raw_key.value or b"").decode()
            nbytes = sizes(name)
            if nbytes is not None:
                wanted.append((i, sig, name, *nbytes))
        total = sum(_round_up(n_in) + _round_up(n_out) for *_, n_in, n_out in wanted)
        self._memory = mmap.mmap(-1, max(total, 1))  # page-aligned, zeroed
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._memory))
        view = memoryview(self._memory)
        self.signatures: dict[str, Signature] = {}
        offset = 0
        for i, sig, name, n_in, n_out in wanted:
            bufs = []
            regions = []
            for getter, size in (("LiteRtGetSignatureInputTensorByIndex", n_in),
                                 ("LiteRtGetSignatureOutputTensorByIndex", n_out)):
                tensor = _vp()
                _check(getattr(lib, getter)(sig, 0, ctypes.byref(tensor)), f"{name}: tensor")
                ttype = ctypes.create_string_buffer(_TENSOR_TYPE_BYTES)
                _check(lib.LiteRtGetRankedTensorType(tensor, ttype), f"{name}: tensor type")
                buf = _vp()
                _check(lib.LiteRtCreateTensorBufferFromHostMemory(
                    ttype, base + offset, size, None, ctypes.byref(buf)), f"{name}: buffer")
                bufs.append(buf)
                regions.append(view[offset : offset + size])
                offset += _round_up(size)
            self.signatures[name] = Signature(
                i, name, regions[0], regions[1], (_vp * 1)(bufs[0]), (_vp * 1)(bufs[1]))

    def run(self, sig: Signature) -> None:
        """Run ``sig`` on its input buffer; the result is in ``sig.output``."""
        status = self._lib.LiteRtRunCompiledModel(
            self._handles[3], sig.index, 1, sig._inputs, 1, sig._outputs)
        if status != _OK:
            raise ModelError(f"TFLite runtime: running signature {sig.key} failed "
                             f"(LiteRT status {status})")


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
