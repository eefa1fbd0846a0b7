"""A throwaway CA and a server certificate for 127.0.0.1/localhost, made with openssl."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(workdir: Path, name: str = "ca") -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
         "-subj", f"/CN=Senken test {name}", cwd=workdir)
    return workdir / f"{name}.pem", workdir / f"{name}.key"


def make_server_tls(workdir: Path) -> TlsFiles:
    ca, ca_key = make_ca(workdir)
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=workdir)
    (workdir / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _run("x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
         cwd=workdir)
    return TlsFiles(ca, workdir / "server.pem", workdir / "server.key")
