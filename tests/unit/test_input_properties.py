"""Property tests for the remaining parsers at input boundaries: whatever arrives, each answers
with its one documented error type (or a valid result), never another exception."""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import EdgeConfig, load_edge_config
from edge_agent.model.nab import NabDataError, load_series, load_windows
from senken_core.errors import ConfigError

toml_scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.booleans(), st.text(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
)
keys = st.sampled_from(["device_id", "state_dir", "serial", "mqtt", "outbox", "model", "port",
                        "host", "kind", "baudrate", "max_readings", "password", "typo"])


def _toml(value: object) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines = [f"{draw(keys)} = {_toml(draw(toml_scalars))}" for _ in range(draw(st.integers(0, 4)))]
    for _ in range(draw(st.integers(0, 3))):
        lines.append(f"[{draw(keys)}]")
        lines += [f"{draw(keys)} = {_toml(draw(toml_scalars))}"
                  for _ in range(draw(st.integers(0, 4)))]
    return "\n".join(lines) + "\n"


def _load(text: str | bytes) -> EdgeConfig | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "edge.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        try:
            return load_edge_config(path)
        except ConfigError as exc:
            assert str(path) in str(exc) and exc.problems
            return None


@settings(max_examples=150)
@given(toml_documents())
def test_config_loader_answers_any_document_with_config_error_or_a_config(text: str) -> None:
    _load(text)


@settings(max_examples=150)
@given(st.binary(max_size=200))
def test_config_loader_answers_any_bytes_with_config_error(data: bytes) -> None:
    _load(data)


csv_cells = st.one_of(
    st.text(alphabet=string.printable, max_size=20),
    st.sampled_from(["2014-04-01 00:00:00", "1.5", "nan", "inf", "-0", "", "1e309"]),
)


@settings(max_examples=150)
@given(st.lists(st.lists(csv_cells, min_size=0, max_size=3), max_size=6),
       st.booleans())
def test_nab_csv_reader_answers_any_file_with_nab_data_error(
    rows: list[list[str]], header: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "series.csv"
        lines = (["timestamp,value"] if header else []) + [",".join(r) for r in rows]
        path.write_text("\n".join(lines))
        try:
            load_series(path, "series.csv")
        except NabDataError as exc:
            assert str(path) in str(exc)


@settings(max_examples=100)
@given(st.one_of(st.text(max_size=60), st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=25)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c,
                                                                 max_size=3)),
    max_leaves=10,
).map(json.dumps)))
def test_nab_windows_reader_answers_any_file_with_nab_data_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "windows.json"
        path.write_text(text)
        try:
            load_windows(path)
        except NabDataError as exc:
            assert str(path) in str(exc)
