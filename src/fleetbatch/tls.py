"""The server's TLS certificate: the operator's own, or a local CA and a leaf made once.

Without `--tls-cert`/`--tls-key`, a small CA and a server certificate signed by it are
written under `<data-dir>/tls/` on first start and reused afterwards. Devices and HTTPS
clients trust `ca.pem`; devices skip the hostname check, so one certificate serves
every address the server is reached by. Client certificates are never requested.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import secrets
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetbatch.domain.errors import FleetbatchError
from fleetbatch.settings import Settings

VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)
# back-date the start: a device whose clock runs a little behind must still accept the cert
CLOCK_SKEW = datetime.timedelta(hours=1)
# RSA rather than EC: the widest support among device TLS stacks and legacy Java clients
RSA_KEY_BITS = 2048
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind


class TlsConfigError(FleetbatchError):
    """The TLS certificate or key is missing, unreadable, or does not fit together."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the server's certificate and key are; `ca` is None for an operator's own cert."""

    cert: Path
    key: Path
    ca: Path | None = None


def ensure_tls_files(settings: Settings) -> TlsFiles:
    """The operator's cert and key, checked; else the generated ones, made on first use.

    Blocking (file I/O, RSA key generation): call it through `asyncio.to_thread`.
    Raises TlsConfigError when only one of cert/key is given or they do not load.
    """
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise TlsConfigError("--tls-cert and --tls-key must be given together")
    if settings.tls_cert is not None and settings.tls_key is not None:
        files = TlsFiles(cert=settings.tls_cert, key=settings.tls_key)
    else:
        directory = settings.data_dir / "tls"
        try:
            files = _ensure_generated(directory, server_names(settings.host))
        except (OSError, ValueError) as exc:  # unwritable data dir, a damaged PEM
            raise TlsConfigError(f"cannot prepare the TLS files in {directory}: {exc}") from exc
    server_ssl_context(files)  # fail at startup, with our error, not at the first handshake
    return files


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """A server-side TLS context over `files` that does not ask clients for certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # legacy HTTPS clients present a client cert; requesting none lets any of them in
    context.verify_mode = ssl.CERT_NONE
    try:
        context.load_cert_chain(files.cert, files.key)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsConfigError(
            f"cannot load TLS certificate {files.cert} with key {files.key}: {exc}"
        ) from exc
    return context


def device_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """The MQTTS context: Huawei's device SDK speaks TLS 1.2 and checks us against its CA file."""
    context = server_ssl_context(files)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_names(host: str) -> list[str]:
    """The names and addresses the generated server certificate covers."""
    names = ["localhost", "127.0.0.1", "::1"]
    if host not in _WILDCARD_HOSTS:
        names.append(host)
    names.append(socket.gethostname())
    return list(dict.fromkeys(name for name in names if name))


def _ensure_generated(directory: Path, names: list[str]) -> TlsFiles:
    files = TlsFiles(
        cert=directory / "server.pem", key=directory / "server.key", ca=directory / "ca.pem"
    )
    ca_key_path = directory / "ca.key"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # two servers sharing a data dir must not each write half a CA
    with _exclusive_lock(directory / ".lock"):
        assert files.ca is not None
        if files.ca.exists() and ca_key_path.exists():
            ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
            ca_key = _load_rsa_key(ca_key_path)
        else:
            ca_key = _new_key()
            ca_cert = _issue_ca(ca_key)
            _write_private(ca_key_path, _key_pem(ca_key))
            _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
        if not _leaf_fits(files, ca_cert, names):
            leaf_key = _new_key()
            leaf = _issue_leaf(leaf_key, ca_cert, ca_key, names)
            _write_private(files.key, _key_pem(leaf_key))
            _write(files.cert, leaf.public_bytes(serialization.Encoding.PEM))
    return files


def _leaf_fits(files: TlsFiles, ca_cert: x509.Certificate, names: list[str]) -> bool:
    """True when the existing leaf is this CA's, matches its key, covers every wanted name
    and is not about to expire; otherwise a new one is issued (the CA, which clients trust,
    stays)."""
    if not (files.cert.exists() and files.key.exists()):
        return False
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    try:
        leaf.verify_directly_issued_by(ca_cert)
        covered = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    # a crash between writing the key and the cert leaves a pair that does not match
    key_matches = _load_rsa_key(files.key).public_key() == leaf.public_key()
    fresh = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > RENEW_BEFORE
    return key_matches and fresh and set(_general_names(names)) <= set(covered)


def _issue_ca(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetbatch"),
            # a unique name: clients trusting CAs of several data dirs must tell them apart
            x509.NameAttribute(NameOID.COMMON_NAME, f"fleetbatch local CA {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def _issue_leaf(
    key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    names: list[str],
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_rsa_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TlsConfigError(
            f"{path} is not the RSA key fleetbatch generated; remove {path.parent}"
        )
    return key


def _write_private(path: Path, data: bytes) -> None:
    _write(path, data, mode=0o600)


def _write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write via a temporary file and rename, so a reader never sees half a PEM."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
