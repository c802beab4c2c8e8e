"""AK/SK request signatures as Huawei Cloud SDKs compute them (spec: iotda-v5 §2).

Pure: the verifier rebuilds the canonical request from what was received (method, raw path,
raw query, the signed headers, the body's hash) and compares signatures in constant time.
Two algorithms: `SDK-HMAC-SHA256` signs with the SK itself; `V11-HMAC-SHA256` signs with a
key derived (HKDF-SHA256) from AK, SK and the credential scope `yyyyMMdd/region/service`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from fleetbatch.domain.errors import AuthFailed

PLAIN = "SDK-HMAC-SHA256"
DERIVED = "V11-HMAC-SHA256"
# the service name IoTDAClient's builder sets for derived signing
DERIVED_SERVICE = "iotdm"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
CONTENT_SHA256_HEADER = "x-sdk-content-sha256"
DATE_HEADER = "x-sdk-date"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
# Huawei API Gateway's rule: a signature is good this long either side of the server clock
MAX_SKEW_MS = 15 * 60 * 1000
REQUIRED_SIGNED_HEADERS = ("host", DATE_HEADER)

_DATE_SHAPE = re.compile(r"\d{8}T\d{6}Z")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[a-z0-9-]+")
_REGION = re.compile(r"[a-z0-9-]{1,64}")


def rfc3986(text: str) -> str:
    """Percent-encode everything but RFC 3986 unreserved characters (`A-Za-z0-9-_.~`)."""
    return quote(text, safe="~")


def canonical_uri(raw_path: str) -> str:
    """The path decoded, each segment re-encoded, with a trailing `/` (the SDK's rule)."""
    # decoded before splitting: an encoded `/` splits too, as the SDK's signer does
    segments = [rfc3986(segment) for segment in unquote(raw_path).split("/")]
    uri = "/".join(segments)
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(raw_query: str) -> str:
    """`name=value` pairs decoded, sorted by name then value, re-encoded, `&`-joined."""
    if not raw_query:
        return ""
    pairs = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((unquote(name.replace("+", " ")), unquote(value.replace("+", " "))))
    pairs.sort()
    return "&".join(f"{rfc3986(name)}={rfc3986(value)}" for name, value in pairs)


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    signed_headers: tuple[str, ...],
    payload_hash: str,
) -> str:
    """The text both sides hash; `headers` are keyed by lower-case name."""
    header_lines = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed_headers)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            header_lines,
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    """The body's line of the canonical request: a declared hash wins, else SHA-256 of it."""
    actual = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256
    declared = headers.get(CONTENT_SHA256_HEADER)
    if declared is None or declared == UNSIGNED_PAYLOAD:
        return actual if declared is None else declared
    # a declared digest is signed, but it must also be the body's, or the body is unsigned
    if not hmac.compare_digest(declared.lower(), actual):
        raise AuthFailed("X-Sdk-Content-Sha256 is not the body's SHA-256")
    return declared


def _hmac_hex(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def derived_key(access_key: str, secret_key: str, info: str) -> str:
    """The V11 signing key: HKDF-SHA256 (salt AK, input SK, info, one 32-byte block), as hex."""
    prk = hmac.new(access_key.encode(), secret_key.encode(), hashlib.sha256).digest()
    okm = hmac.new(prk, info.encode() + b"\x01", hashlib.sha256).digest()
    return okm.hex()


@dataclass(frozen=True, slots=True)
class Authorization:
    """The parsed `Authorization` header of a signed request."""

    algorithm: str
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str
    # derived only: the credential scope's parts
    date: str | None = None
    region: str | None = None
    service: str | None = None

    @property
    def scope(self) -> str:
        """`yyyyMMdd/region/service` (derived signing's `Info`)."""
        return f"{self.date}/{self.region}/{self.service}"


def parse_authorization(value: str) -> Authorization:
    """Parse `ALG Access=AK, SignedHeaders=a;b, Signature=hex` (or `Credential=AK/d/r/s`)."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm not in (PLAIN, DERIVED):
        raise AuthFailed(f"signing algorithm {algorithm!r} is not supported")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, field_value = part.strip().partition("=")
        if not sep or name in fields:
            raise AuthFailed("the Authorization header is malformed")
        fields[name] = field_value
    expected = {"Access" if algorithm == PLAIN else "Credential", "SignedHeaders", "Signature"}
    if set(fields) != expected:
        raise AuthFailed("the Authorization header is malformed")
    signed = tuple(fields["SignedHeaders"].split(";"))
    if list(signed) != sorted(set(signed)) or not all(_HEADER_NAME.fullmatch(h) for h in signed):
        raise AuthFailed("SignedHeaders must be sorted lower-case header names")
    for required in REQUIRED_SIGNED_HEADERS:
        if required not in signed:
            raise AuthFailed(f"the {required} header must be signed")
    signature = fields["Signature"]
    if not _HEX64.fullmatch(signature):
        raise AuthFailed("the signature must be 64 lower-case hex digits")
    if algorithm == PLAIN:
        return Authorization(algorithm, fields["Access"], signed, signature)
    credential = fields["Credential"].split("/")
    if len(credential) != 4:
        raise AuthFailed("Credential must be AK/date/region/service")
    access_key, date, region, service = credential
    return Authorization(algorithm, access_key, signed, signature, date, region, service)


def string_to_sign(auth: Authorization, sdk_date: str, canonical: str) -> str:
    """What the signature is an HMAC of."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    if auth.algorithm == PLAIN:
        return f"{PLAIN}\n{sdk_date}\n{digest}"
    return f"{DERIVED}\n{sdk_date}\n{auth.scope}\n{digest}"


def signature_for(auth: Authorization, secret_key: str, sdk_date: str, canonical: str) -> str:
    """The signature a holder of `secret_key` computes for this request."""
    to_sign = string_to_sign(auth, sdk_date, canonical)
    if auth.algorithm == PLAIN:
        return _hmac_hex(secret_key.encode(), to_sign)
    # the hex text of the derived key is the HMAC key, not its bytes (the SDK's way)
    return _hmac_hex(derived_key(auth.access_key, secret_key, auth.scope).encode(), to_sign)


def parse_sdk_date(value: str) -> int:
    """`X-Sdk-Date` (`20240615T031500Z`) as epoch milliseconds; AuthFailed on another shape."""
    if not _DATE_SHAPE.fullmatch(value):
        raise AuthFailed("X-Sdk-Date must look like 20240615T031500Z")
    try:
        moment = datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise AuthFailed("X-Sdk-Date is not a valid time") from None
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What the verifier needs of a received request; `headers` keyed by lower-case name."""

    method: str
    raw_path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes


def check_scope(auth: Authorization, sdk_date: str) -> None:
    """Derived signing: the credential scope must match the request date and the service."""
    if auth.algorithm != DERIVED:
        return
    if auth.date != sdk_date[:8]:
        raise AuthFailed("the Credential date is not the date of X-Sdk-Date")
    if auth.service != DERIVED_SERVICE:
        raise AuthFailed(f"the Credential service must be {DERIVED_SERVICE}")
    if auth.region is None or not _REGION.fullmatch(auth.region):
        raise AuthFailed("the Credential region is malformed")


def verify(request: SignedRequest, auth: Authorization, secret_key: str, now_ms: int) -> None:
    """Raise AuthFailed unless the request carries a good, fresh signature by `secret_key`."""
    sdk_date = request.headers.get(DATE_HEADER)
    if sdk_date is None:
        raise AuthFailed("the X-Sdk-Date header is missing")
    signed_at = parse_sdk_date(sdk_date)
    if abs(now_ms - signed_at) > MAX_SKEW_MS:
        raise AuthFailed("X-Sdk-Date is more than 15 minutes from the server's clock")
    check_scope(auth, sdk_date)
    for name in auth.signed_headers:
        if name not in request.headers:
            raise AuthFailed(f"the signed header {name} is missing")
    canonical = canonical_request(
        request.method,
        request.raw_path,
        request.raw_query,
        request.headers,
        auth.signed_headers,
        payload_hash(request.headers, request.body),
    )
    expected = signature_for(auth, secret_key, sdk_date, canonical)
    if not hmac.compare_digest(expected, auth.signature):
        raise AuthFailed("the signature does not match the request")
