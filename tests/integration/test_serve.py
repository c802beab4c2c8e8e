"""`fleetbatch serve`: the real process on free ports, and the in-process `Server`."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetbatch.api import Phase, create_app, set_phase
from fleetbatch.runtime import Runtime
from fleetbatch.server import Server
from fleetbatch.settings import Settings
from fleetbatch.tls import TlsConfigError, ensure_tls_files
from support import LOOPBACK, free_port
from support.serve import (
    EXIT_WITHIN_S,
    HEALTHY_WITHIN_S,
    ServeProcess,
    health,
    spawn,
    start_healthy,
    stop_process,
)
from support.waiting import wait_until


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServeProcess]:
    """A healthy `fleetbatch serve` child, killed after the test if it still runs."""
    server = start_healthy(tmp_path / "data")
    try:
        yield server
    finally:
        stop_process(server)


def ca_context(ca: Path) -> ssl.SSLContext:
    """A client context trusting `ca`, verifying as strictly as Python 3.13 does by default."""
    context = ssl.create_default_context(cafile=ca)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def write_client_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed client certificate and key, as legacy HTTPS clients present."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy-app")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "client.pem", directory / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def served_certificate_sha256(port: int) -> str:
    pem = ssl.get_server_certificate((LOOPBACK, port), timeout=5)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def test_health_is_ok_over_http_and_https_verified_against_the_generated_ca(
    served: ServeProcess, tmp_path: Path
) -> None:
    tls_dir = served.data_dir / "tls"
    plain = health(served.http_url)
    verified = health(served.https_url, verify=ca_context(tls_dir / "ca.pem"))
    with_client_cert = ca_context(tls_dir / "ca.pem")
    with_client_cert.load_cert_chain(*write_client_certificate(tmp_path))
    presenting = health(served.https_url, verify=with_client_cert)

    for response in (plain, verified, presenting):
        assert response is not None
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
    for private in ("ca.key", "server.key"):
        assert (tls_dir / private).stat().st_mode & 0o777 == 0o600


def test_a_second_server_on_a_taken_http_port_exits_2_with_one_line(
    served: ServeProcess, tmp_path: Path
) -> None:
    other_data_dir = tmp_path / "other"
    second = spawn(other_data_dir, served.http_port, free_port())

    code, stderr = second.finish()

    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert str(served.http_port) in lines[0]
    assert "--http-port" in lines[0]
    assert not other_data_dir.exists(), "ports are bound before anything is written"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_cleanly(served: ServeProcess, sig: signal.Signals) -> None:
    served.proc.send_signal(sig)

    code, stderr = served.finish()

    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert port_is_free(served.http_port)


def test_tls_files_are_made_once_and_reused_on_the_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_healthy(data_dir)
    try:
        first_sha = served_certificate_sha256(first.https_port)
        ca_pem = (data_dir / "tls" / "ca.pem").read_bytes()
        first.proc.send_signal(signal.SIGTERM)
        assert first.finish()[0] == 0
    finally:
        stop_process(first)

    second = start_healthy(data_dir)
    try:
        assert served_certificate_sha256(second.https_port) == first_sha
        assert (data_dir / "tls" / "ca.pem").read_bytes() == ca_pem
    finally:
        stop_process(second)


async def test_serve_in_process_on_port_0_reports_ports_and_stops_on_the_event(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"http_port": 0, "https_port": 0})
    server = Server(settings)
    ready, stop = asyncio.Event(), asyncio.Event()
    handlers_before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    serving = asyncio.create_task(server.serve(ready=ready, stop=stop))
    try:
        await wait_until(
            lambda: ready.is_set() or serving.done(), timeout_s=HEALTHY_WITHIN_S, message="ready"
        )
        assert ready.is_set(), serving.result()
        assert server.http_port != 0
        assert server.https_port != 0
        assert server.tls is not None
        assert server.tls.ca is not None
        async with httpx.AsyncClient(verify=ca_context(server.tls.ca), timeout=5) as client:
            for url in server.urls:
                response = await client.get(f"{url}/health")
                assert (response.status_code, response.json()) == (200, {"status": "ok"})
    finally:
        stop.set()
        async with asyncio.timeout(EXIT_WITHIN_S):
            await serving

    assert port_is_free(server.http_port)
    assert port_is_free(server.https_port)
    assert {sig: signal.getsignal(sig) for sig in handlers_before} == handlers_before


async def test_health_is_503_until_the_runner_says_ready(tmp_path: Path) -> None:
    async with await Runtime.open(Settings(data_dir=tmp_path / "data")) as runtime:
        app = create_app(runtime)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            seen = []
            for phase in (None, Phase.READY, Phase.STOPPING):
                if phase is not None:
                    set_phase(app, phase)
                response = await client.get("/health")
                seen.append((response.status_code, response.json()["status"]))

    assert seen == [(503, "starting"), (200, "ok"), (503, "stopping")]
    assert app.state.runtime is runtime


async def test_a_cert_without_its_key_is_refused_and_the_ports_released(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", http_port=0, https_port=0, tls_cert=tmp_path / "cert.pem"
    )
    server = Server(settings)

    with pytest.raises(TlsConfigError, match="together"):
        await server.start()

    assert port_is_free(server.http_port)
    assert not (tmp_path / "data" / "fleetbatch.db").exists()


def test_a_new_host_gets_a_new_server_certificate_from_the_same_ca(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = ensure_tls_files(Settings(data_dir=data_dir))
    assert first.ca is not None
    ca_pem, leaf_pem = first.ca.read_bytes(), first.cert.read_bytes()

    ensure_tls_files(Settings(data_dir=data_dir, host="10.20.30.40"))

    leaf = x509.load_pem_x509_certificate(first.cert.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert first.ca.read_bytes() == ca_pem
    assert first.cert.read_bytes() != leaf_pem
    assert "10.20.30.40" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
