"""AK/SK signatures: the worked examples of spec iotda-v5 §2.5 verify, every tampered part fails."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from fleetbatch.domain import signing
from fleetbatch.domain.errors import AuthFailed
from fleetbatch.domain.timefmt import from_compact

AK = "EXAMPLEAK0123456789AB"
SK = "exampleSK0123456789abcdefghijklmnopqrstuv"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
DATE = "20240615T031500Z"
NOW_MS = from_compact(DATE)
SIGNED = "content-type;host;user-agent;x-project-id;x-sdk-date"
HEADERS = {
    "content-type": "application/json",
    "host": "127.0.0.1:8080",
    "user-agent": "huaweicloud-usdk-python/3.0; fleetbatch-test",
    "x-project-id": PROJECT,
    "x-sdk-date": DATE,
}
BODY_A = (
    b'{"task_name": "reboot_all", "task_type": "createCommands", "targets": '
    b'["6650f0c2a1b2c3d4e5f60718_node-001", "6650f0c2a1b2c3d4e5f60718_node-002"], '
    b'"document": {"service_id": "Reboot", "command_name": "reboot", "paras": {"delay": 5}}}'
)
POST_A = signing.SignedRequest("POST", f"/v5/iot/{PROJECT}/batchtasks", "", HEADERS, BODY_A)
GET_B = signing.SignedRequest(
    "GET",
    f"/v5/iot/{PROJECT}/batchtasks/665a1b2c3d4e5f6071829304",
    "limit=10&offset=0&task_detail_status=Fail",
    HEADERS,
    b"",
)
SIG_A = "d97cccf53a7a3a05478e963363713c9f2a9022033eb50418355dfa1e0775ed3d"
SIG_B = "b052b116fb77d5613b4b6ab456daa22583b638357782d5a7a496b733d9e2e3f4"
SIG_C = "f2e7f11a3e1f32b85b38a2856e99cb5cc4efa093a05140f64901db8419da3862"
SIG_D = "a0ec726932d58a6bafd44b9d1553e15ce776cbef8a99a89c08427734b71be8c5"


def plain(signature: str) -> str:
    return f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders={SIGNED}, Signature={signature}"


def derived(signature: str, scope: str = "20240615/cn-north-4/iotdm") -> str:
    return f"V11-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={SIGNED}, Signature={signature}"


def canonical(request: signing.SignedRequest) -> str:
    return signing.canonical_request(
        request.method,
        request.raw_path,
        request.raw_query,
        request.headers,
        tuple(SIGNED.split(";")),
        signing.payload_hash(request.headers, request.body),
    )


def test_example_a_canonical_request_is_the_specs() -> None:
    assert len(BODY_A) == 232
    assert canonical(POST_A) == (
        "POST\n"
        f"/v5/iot/{PROJECT}/batchtasks/\n"
        "\n"
        "content-type:application/json\n"
        "host:127.0.0.1:8080\n"
        "user-agent:huaweicloud-usdk-python/3.0; fleetbatch-test\n"
        f"x-project-id:{PROJECT}\n"
        f"x-sdk-date:{DATE}\n"
        "\n"
        f"{SIGNED}\n"
        "43937658d0deb2a4e3c2534124b3209cfd1dfc1c2d0109794ce249d2763e6b9d"
    )
    auth = signing.parse_authorization(plain(SIG_A))
    assert signing.string_to_sign(auth, DATE, canonical(POST_A)) == (
        f"SDK-HMAC-SHA256\n{DATE}\n308f249e36a758b2914a304f9c0874a53ea2af431ddba789bac0f0a4c2b38cab"
    )


def test_example_b_canonical_request_hashes_as_the_spec_says() -> None:
    text = canonical(GET_B)
    assert text.split("\n")[1:3] == [
        f"/v5/iot/{PROJECT}/batchtasks/665a1b2c3d4e5f6071829304/",
        "limit=10&offset=0&task_detail_status=Fail",
    ]
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "c249cabc3a1d252058d23109286a13c741d5f1a39049a25be777b1020d37b083"
    )


def test_example_c_derived_key_is_the_specs() -> None:
    assert signing.derived_key(AK, SK, "20240615/cn-north-4/iotdm") == (
        "f0e45b101cc132f58ec2d2fde87635b9b30a4efa586350fb9a76d5c389e8e7c9"
    )


@pytest.mark.parametrize(
    ("request_", "header"),
    [
        pytest.param(POST_A, plain(SIG_A), id="A-plain-post"),
        pytest.param(GET_B, plain(SIG_B), id="B-plain-get"),
        pytest.param(GET_B, derived(SIG_C), id="C-derived-get"),
        pytest.param(POST_A, derived(SIG_D), id="D-derived-post"),
    ],
)
def test_the_worked_examples_verify(request_: signing.SignedRequest, header: str) -> None:
    auth = signing.parse_authorization(header)
    assert auth.access_key == AK
    signing.verify(request_, auth, SK, NOW_MS)
    # within the allowed skew either side, and not beyond it
    signing.verify(request_, auth, SK, NOW_MS + signing.MAX_SKEW_MS)
    signing.verify(request_, auth, SK, NOW_MS - signing.MAX_SKEW_MS)
    for now in (NOW_MS + signing.MAX_SKEW_MS + 1000, NOW_MS - signing.MAX_SKEW_MS - 1000):
        with pytest.raises(AuthFailed, match="15 minutes"):
            signing.verify(request_, auth, SK, now)


TAMPERED_A = {
    "method": replace(POST_A, method="PUT"),
    "path": replace(POST_A, raw_path=f"/v5/iot/{PROJECT}/batchtasks/x"),
    "query": replace(POST_A, raw_query="limit=11"),
    "body": replace(POST_A, body=BODY_A.replace(b"node-002", b"node-003")),
    "signed header": replace(POST_A, headers={**HEADERS, "user-agent": "other"}),
    "date": replace(POST_A, headers={**HEADERS, "x-sdk-date": "20240615T031501Z"}),
    "host": replace(POST_A, headers={**HEADERS, "host": "127.0.0.1:8081"}),
    "project header": replace(POST_A, headers={**HEADERS, "x-project-id": "0" * 32}),
}


@pytest.mark.parametrize("part", list(TAMPERED_A))
@pytest.mark.parametrize("header", [plain(SIG_A), derived(SIG_D)], ids=["plain", "derived"])
def test_every_tampered_part_is_refused(part: str, header: str) -> None:
    auth = signing.parse_authorization(header)
    with pytest.raises(AuthFailed, match="signature does not match"):
        signing.verify(TAMPERED_A[part], auth, SK, NOW_MS)


def test_the_wrong_secret_or_a_changed_scope_is_refused() -> None:
    with pytest.raises(AuthFailed, match="signature does not match"):
        signing.verify(POST_A, signing.parse_authorization(plain(SIG_A)), SK + "x", NOW_MS)
    other_region = signing.parse_authorization(derived(SIG_D, "20240615/cn-north-5/iotdm"))
    with pytest.raises(AuthFailed, match="signature does not match"):
        signing.verify(POST_A, other_region, SK, NOW_MS)
    with pytest.raises(AuthFailed, match="date"):
        signing.verify(
            POST_A,
            signing.parse_authorization(derived(SIG_D, "20240616/cn-north-4/iotdm")),
            SK,
            NOW_MS,
        )
    with pytest.raises(AuthFailed, match="service"):
        signing.verify(
            POST_A,
            signing.parse_authorization(derived(SIG_D, "20240615/cn-north-4/iam")),
            SK,
            NOW_MS,
        )


@pytest.mark.parametrize(
    "header",
    [
        "",
        "SDK-HMAC-SM3 Access=AK, SignedHeaders=host;x-sdk-date, Signature=" + "0" * 64,
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders={SIGNED}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=content-type;host, Signature={SIG_A}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=x-sdk-date;host, Signature={SIG_A}",
        f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders={SIGNED}, Signature=ABC",
        f"V11-HMAC-SHA256 Credential={AK}/20240615, SignedHeaders={SIGNED}, Signature={SIG_C}",
        f"SDK-HMAC-SHA256 Credential={AK}, SignedHeaders={SIGNED}, Signature={SIG_A}",
    ],
)
def test_malformed_authorization_headers_are_refused(header: str) -> None:
    with pytest.raises(AuthFailed):
        signing.parse_authorization(header)


def test_missing_signed_header_and_date_shape_are_refused() -> None:
    auth = signing.parse_authorization(plain(SIG_A))
    headers = {k: v for k, v in HEADERS.items() if k != "user-agent"}
    with pytest.raises(AuthFailed, match="user-agent"):
        signing.verify(replace(POST_A, headers=headers), auth, SK, NOW_MS)
    with pytest.raises(AuthFailed, match="X-Sdk-Date"):
        signing.verify(
            replace(POST_A, headers={**HEADERS, "x-sdk-date": "2024-06-15T03:15:00Z"}),
            auth,
            SK,
            NOW_MS,
        )


def test_a_declared_payload_hash_must_be_the_bodys() -> None:
    headers = {**HEADERS, "x-sdk-content-sha256": hashlib.sha256(b"other").hexdigest()}
    with pytest.raises(AuthFailed, match="Sha256"):
        signing.payload_hash(headers, BODY_A)
    unsigned = {**HEADERS, "x-sdk-content-sha256": signing.UNSIGNED_PAYLOAD}
    assert signing.payload_hash(unsigned, b"--multipart--") == signing.UNSIGNED_PAYLOAD


def test_canonical_uri_and_query_encode_as_the_sdk_does() -> None:
    assert signing.canonical_uri("/v5/iot/p/devices/a%20b~c") == "/v5/iot/p/devices/a%20b~c/"
    assert signing.canonical_uri("/a%2Fb/") == "/a/b/"
    assert signing.canonical_query("b=2&a=x%2Fy&a=1&c=") == "a=1&a=x%2Fy&b=2&c="
    assert signing.canonical_query("") == ""
