"""Throwaway certificates for TLS tests, made at test time with the ``openssl`` command:
a CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path  # a valid key that matches none of the certificates


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _key(name: str, cwd: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name, cwd=cwd)


def _signed(name: str, cn: str, extensions: str, serial: int, cwd: Path) -> None:
    _key(f"{name}.key", cwd)
    _openssl(
        "req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=cwd
    )
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", str(serial), "-days", "2", "-sha256",
        "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip


def make_certs(directory: Path) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    _key("ca.key", directory)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=Notifier test CA",
        "-days", "2", "-sha256", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _signed(
        "server",
        "localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:notifier.test\nextendedKeyUsage=serverAuth\n",
        2,
        directory,
    )
    _signed("client", "test client", "extendedKeyUsage=clientAuth\n", 3, directory)
    _key("other.key", directory)
    return Certs(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_key=directory / "other.key",
    )
