"""Who may send: calling AE title with a host check, and DICOM TLS against DCMTK's ``storescu +tls``."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from config import ConfigError
from config.settings import parse_settings
from dicom_node.index import Index
from dicom_node.listeners import ListenerProcesses
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from tests.conftest import node_settings
from tests.helpers.peers import free_port, run_dcmtk, shared_data, wait_until

pytestmark = pytest.mark.integration


@contextmanager
def running_scp(storage: Path, **sections: object) -> Iterator[StorageSCP]:
    settings = node_settings(storage, **sections).with_absolute_storage()
    server = StorageSCP(settings, Index(storage / "index.sqlite3"), Spool(storage))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _audit(scp: StorageSCP) -> list[dict]:
    rows = scp.index.query("SELECT * FROM associations WHERE outcome != 'open' ORDER BY started_at")
    return [dict(row) for row in rows]


def _echo(port: int, *options: str) -> subprocess.CompletedProcess:
    return run_dcmtk("echoscu", *options, "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(port))


def test_source_host_check_rejects_the_right_title_from_the_wrong_address(tmp_path: Path) -> None:
    wrong_host = [{"ae_title": "STORESCU", "host": "192.0.2.7"}]
    with running_scp(tmp_path / "a", sources=wrong_host) as scp:
        refused = _echo(scp.port)
        assert refused.returncode != 0 and "Association Rejected" in refused.stdout + refused.stderr
        assert wait_until(lambda: _audit(scp), timeout=5, what="the audit row")
        row = _audit(scp)[0]
        assert row["outcome"] == "rejected" and row["calling_ae_title"] == "STORESCU"
        assert "not allowed from 127.0.0.1" in row["detail"] and "192.0.2.7" in row["detail"]

    # the same title may be listed once per host: one of them matching (a name that resolves) is enough
    both = [{"ae_title": "STORESCU", "host": "192.0.2.7"}, {"ae_title": "STORESCU", "host": "localhost"}]
    with running_scp(tmp_path / "b", sources=both) as scp:
        assert _echo(scp.port).returncode == 0
    with running_scp(tmp_path / "c", sources=[{"ae_title": "STORESCU", "host": "127.0.0.1"}]) as scp:
        files = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))[:3]
        sent = run_dcmtk(
            "storescu", "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(scp.port), *map(str, files)
        )
        assert sent.returncode == 0, sent.stderr
        assert len(scp.index.query("SELECT * FROM instances")) == 3


def _openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate and a client certificate signed by it, and a self-signed stranger."""
    folder = tmp_path_factory.mktemp("pki")

    def key(name: str) -> str:
        path = folder / f"{name}.key"
        _openssl("genrsa", "-out", str(path), "2048")
        return str(path)

    ca_key = key("ca")
    _openssl("req", "-x509", "-new", "-key", ca_key, "-days", "2", "-subj", "/CN=Test CA",
             "-out", str(folder / "ca.crt"))  # fmt: skip
    for name in ("server", "client"):
        _openssl(
            "req", "-new", "-key", key(name), "-subj", f"/CN={name}", "-out", str(folder / f"{name}.csr")
        )
        _openssl("x509", "-req", "-in", str(folder / f"{name}.csr"), "-CA", str(folder / "ca.crt"),
                 "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-out", str(folder / f"{name}.crt"))  # fmt: skip
    _openssl("req", "-x509", "-new", "-key", key("stranger"), "-days", "2", "-subj", "/CN=stranger",
             "-out", str(folder / "stranger.crt"))  # fmt: skip
    return folder


def _tls(pki: Path, who: str = "client") -> list[str]:
    """storescu/echoscu options: TLS with ``who``'s key and certificate, trusting the test CA."""
    return ["+tls", str(pki / f"{who}.key"), str(pki / f"{who}.crt"), "+cf", str(pki / "ca.crt")]


def test_tls_with_client_certificates_against_storescu(tmp_path: Path, pki: Path) -> None:
    tls = {
        "certificate": str(pki / "server.crt"),
        "private_key": str(pki / "server.key"),
        "ca_certificates": str(pki / "ca.crt"),
    }
    with running_scp(tmp_path / "node", node={"tls": tls}) as scp:
        assert scp.tls_port == scp.port  # no tls.port: the node's port is TLS only
        files = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))[:5]
        sent = run_dcmtk(
            "storescu", *_tls(pki), "-aet", "STORESCU", "-aec", "MEDAGENT", "127.0.0.1", str(scp.port),
            *map(str, files),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert len(scp.index.query("SELECT * FROM instances")) == 5

        # plain TCP to the TLS port, and a certificate the CA did not sign, are both turned away ...
        assert _echo(scp.port).returncode != 0
        stranger = _echo(scp.port, *_tls(pki, "stranger"))
        assert stranger.returncode != 0
        # ... and a peer that opens a connection and never shakes hands does not hold up the others
        with socket.create_connection(("127.0.0.1", scp.port)):
            assert _echo(scp.port, *_tls(pki)).returncode == 0
        assert len(scp.index.query("SELECT * FROM instances")) == 5


def test_tls_port_beside_the_plain_one(tmp_path: Path, pki: Path) -> None:
    tls_port = free_port()
    tls = {"certificate": str(pki / "server.crt"), "private_key": str(pki / "server.key"), "port": tls_port}
    with running_scp(tmp_path / "node", node={"tls": tls}) as scp:
        assert scp.tls_port == tls_port != scp.port
        assert _echo(scp.port).returncode == 0  # plain stays on node.port
        # no ca_certificates: a peer without a certificate of its own may connect over TLS
        anonymous = _echo(tls_port, "+tla", "+cf", str(pki / "ca.crt"))
        assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
        assert _echo(tls_port).returncode != 0


def test_tls_connections_handed_to_a_listener_process_shake_hands_there(tmp_path: Path, pki: Path) -> None:
    tls_port = free_port()
    tls = {"certificate": str(pki / "server.crt"), "private_key": str(pki / "server.key"), "port": tls_port}
    storage = tmp_path / "node"
    settings = node_settings(storage, node={"tls": tls, "listener_processes": 2}).with_absolute_storage()
    processes = ListenerProcesses(settings)
    scp = StorageSCP(
        settings, Index(storage / "index.sqlite3"), Spool(storage), slots=processes.slots,
        hand_over=processes.hand_over,
    )  # fmt: skip
    scp.start()
    processes.start(scp.port, scp.tls_port, lambda pid: None)

    def idle() -> bool:
        return list(processes.slots.connections[:]) == [0, 0]

    try:
        (helper,) = processes.pids
        for _ in range(2):  # one to each process, each shaking hands itself
            anonymous = _echo(tls_port, "+tla", "+cf", str(pki / "ca.crt"))
            assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
            wait_until(idle, 10, 0.05, "the connection closed")
        for _ in range(2):  # plain DICOM on the TLS port: turned away by either, and counted closed
            assert _echo(tls_port).returncode != 0
        wait_until(idle, 10, 0.05, "the refused connections counted closed")
        for _ in range(2):
            assert _echo(scp.port).returncode == 0
            wait_until(idle, 10, 0.05, "the connection closed")
        released = wait_until(
            lambda: (
                (rows := [r["listener_pid"] for r in _audit(scp) if r["outcome"] == "released"])
                and len(rows) == 4
                and rows
            ),
            10,
            0.1,
            "four released associations in the audit",
        )
        assert sorted(released) == sorted([os.getpid(), helper] * 2)
    finally:
        processes.stop()
        scp.stop()


def test_tls_config_errors_name_the_key(tmp_path: Path, pki: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.tls\.certificate: '.*missing\.crt' is not a readable file"):
        parse_settings(
            {"node": {"tls": {"certificate": str(tmp_path / "missing.crt"), "private_key": __file__}}},
            environ={},
        )
    with pytest.raises(ConfigError, match=r"node\.tls\.private_key: Field required"):
        parse_settings({"node": {"tls": {"certificate": __file__}}}, environ={})
    mismatched = {"certificate": str(pki / "server.crt"), "private_key": str(pki / "client.key")}
    with pytest.raises(ConfigError, match=r"node\.tls: certificate '.*server\.crt' and private_key"):
        parse_settings({"node": {"tls": mismatched}}, environ={})
