"""A throwaway PKI for secured fleets: a CA, a server certificate for 127.0.0.1, client certificates for
agents (mutual TLS), bearer tokens made by ``stoker token``, and the coordinator's config that asks for
them. Made with the `cryptography` package; used by the TLS tests and the hostile sandbox suite."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stoker.demo import local_fleet
from stoker.v1 import inventory_pb2, inventory_pb2_grpc


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key, cert) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _cert(common_name: str, issuer_key, issuer_name, key, *, ca=False, ip=False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(
    d: Path, nodes: tuple[str, ...], tokens: tuple[tuple[str, str], ...], rogue: bool = False
) -> dict[str, str]:
    """Write into ``d``: ``ca``, ``server`` and one ``<node>`` certificate per node (``.pem`` and
    ``.key``), ``rogue`` (a certificate for n1 from another CA) when asked, and ``tokens.json`` with one
    token per (name, role). Returns each token's secret by name."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("stoker test CA", ca_key, None, ca_key, ca=True)
    _write(d / "ca", ca_key, ca)
    server_key = _key()
    _write(d / "server", server_key, _cert("coordinator", ca_key, ca.subject, server_key, ip=True))
    for node in nodes:
        k = _key()
        _write(d / node, k, _cert(node, ca_key, ca.subject, k))
    if rogue:
        rogue_ca_key = _key()
        rogue_ca = _cert("rogue CA", rogue_ca_key, None, rogue_ca_key, ca=True)
        k = _key()
        _write(d / "rogue", k, _cert("n1", rogue_ca_key, rogue_ca.subject, k))
    secrets = {}
    lines = []
    for name, role in tokens:
        out = subprocess.run(
            [sys.executable, "-m", "stoker.cli.main", "token", "--name", name, "--role", role],
            capture_output=True,
            text=True,
            check=True,
        )
        secrets[name] = out.stderr.strip().rsplit(" ", 1)[-1]
        lines.append(json.loads(out.stdout))
    (d / "tokens.json").write_text(json.dumps({"tokens": lines}))
    return secrets


def secure_coordinator(
    workdir: Path, pki_dir: Path, agent_port: int, settings: str = ""
) -> local_fleet.Process:
    """A coordinator with TLS, tokens for clients, and mutual TLS for agents on ``agent_port``; ``settings``:
    more of its settings file (TOML sections, written before ``[security]``)."""
    path = workdir / "coordinator.toml"
    path.write_text(
        settings + "\n"
        "[security]\n"
        f'tls_cert = "{pki_dir / "server.pem"}"\n'
        f'tls_key = "{pki_dir / "server.key"}"\n'
        f'client_ca = "{pki_dir / "ca.pem"}"\n'
        f'agent_listen = "127.0.0.1:{agent_port}"\n'
        f'tokens_file = "{pki_dir / "tokens.json"}"\n'
    )
    return local_fleet.start_coordinator(workdir, extra=["--config", str(path)])


def tls_channel(
    address: str, pki_dir: Path, token: str | None = None, client: str | None = None
) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        (pki_dir / "ca.pem").read_bytes(),
        private_key=(pki_dir / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki_dir / f"{client}.pem").read_bytes() if client else None,
    )
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(address, creds)


def wait_nodes(address, pki_dir, token, names, timeout=30.0):
    stub = inventory_pb2_grpc.InventoryStub(tls_channel(address, pki_dir, token))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = stub.QueryInventory(inventory_pb2.QueryInventoryRequest(summary_only=True), timeout=5)
        if set(names) <= {n.node for n in reply.nodes if n.state == inventory_pb2.NODE_STATE_READY}:
            return reply
        time.sleep(0.1)
    raise AssertionError(f"nodes {names} did not register")
