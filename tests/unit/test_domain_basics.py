"""Identifier formats, time formats, the secret vault and settings."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fleetbatch.domain import ids, timefmt
from fleetbatch.settings import Settings, load_settings, normalize_database_url
from fleetbatch.vault import (
    KEY_BYTES,
    SecretVault,
    VaultKeyError,
    decode_key,
    hash_secret,
    hash_token,
    load_or_create_key,
    verify_secret,
)

# 2015-12-12T12:12:12Z, the example Huawei's docs use
EXAMPLE_S = 1449922332
EXAMPLE_MS = EXAMPLE_S * 1000
# the largest epoch second whose ids still fit the 4-byte seconds field
LAST_ID_SECOND = 2**32 - 1


# --- ids ---------------------------------------------------------------------------------


def test_object_ids_strictly_increase_within_a_generator() -> None:
    generator = ids.ObjectIdGenerator()
    made = [generator.new(now_s=EXAMPLE_S) for _ in range(1000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(ids.is_hex24(value) for value in made)


def test_object_id_layout_is_seconds_random_counter() -> None:
    generator = ids.ObjectIdGenerator()
    first, second = generator.new(now_s=EXAMPLE_S), generator.new(now_s=EXAMPLE_S)
    assert first[:8] == f"{EXAMPLE_S:08x}"
    assert first[8:18] == second[8:18]  # one random part per generator
    assert int(second[18:], 16) == (int(first[18:], 16) + 1) & 0xFFFFFF


def test_object_ids_stay_ordered_when_the_clock_goes_back() -> None:
    generator = ids.ObjectIdGenerator()
    later = generator.new(now_s=EXAMPLE_S + 10)
    earlier_clock = generator.new(now_s=EXAMPLE_S)
    assert earlier_clock > later
    assert earlier_clock[:8] == later[:8]


def test_object_ids_stay_ordered_when_the_counter_wraps() -> None:
    generator = ids.ObjectIdGenerator()
    generator._counter = 0xFFFFFD  # two ids before the wrap
    made = [generator.new(now_s=EXAMPLE_S) for _ in range(4)]
    assert made == sorted(made)
    assert made[2][:8] == f"{EXAMPLE_S + 1:08x}"  # the wrap borrows the next second
    assert made[2][18:] == "000000"


def test_object_ids_order_by_second_across_generators() -> None:
    one, other = ids.ObjectIdGenerator(), ids.ObjectIdGenerator()
    assert one.new(now_s=EXAMPLE_S) < other.new(now_s=EXAMPLE_S + 1)
    assert one.new(now_s=EXAMPLE_S + 5) != other.new(now_s=EXAMPLE_S + 5)


def test_object_ids_keep_their_shape_at_the_last_second() -> None:
    assert ids.ObjectIdGenerator().new(now_s=LAST_ID_SECOND)[:8] == "ffffffff"


def test_process_wide_object_ids_increase() -> None:
    first, second = ids.new_object_id(), ids.new_object_id()
    assert ids.is_hex24(first)
    assert first < second


def test_generated_identifier_shapes() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", ids.new_project_id())
    assert re.fullmatch(r"[A-Za-z0-9]{28}", ids.new_app_id())
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", ids.new_secret())
    assert re.fullmatch(r"[A-Za-z0-9_-]{8}", ids.new_secret(8))
    assert re.fullmatch(r"[A-Z0-9]{20}", ids.new_access_key())
    assert ids.device_id_for("5f1a", "node-1") == "5f1a_node-1"


@pytest.mark.parametrize(
    ("record_id", "text"),
    [
        (0, "0" * 24),
        (1, "0" * 23 + "1"),
        (255, "0" * 22 + "ff"),
        (ids.MAX_RECORD_ID, "0" * 8 + "7fffffffffffffff"),
    ],
)
def test_format_record_id(record_id: int, text: str) -> None:
    assert ids.format_record_id(record_id) == text
    assert ids.is_hex24(text)
    assert ids.parse_marker(text) == record_id


@given(st.integers(min_value=0, max_value=ids.MAX_RECORD_ID))
def test_record_ids_round_trip_through_markers(record_id: int) -> None:
    assert ids.parse_marker(ids.format_record_id(record_id)) == record_id


def test_default_marker_clamps_to_the_largest_record_id() -> None:
    assert ids.MAX_MARKER == "ffffffffffffffffffffffff"
    assert ids.parse_marker(ids.MAX_MARKER) == ids.MAX_RECORD_ID
    assert ids.parse_marker("8" + "0" * 23) == ids.MAX_RECORD_ID


@pytest.mark.parametrize(("marker", "bound"), [("0", 0), ("ff", 255), ("0" * 24, 0)])
def test_short_markers_are_plain_hex(marker: str, bound: int) -> None:
    assert ids.parse_marker(marker) == bound


@pytest.mark.parametrize(
    "marker",
    ["", "g", "F" * 24, "f" * 25, "-1", " 1", "1 ", "0x1f", "12\n"],
    ids=["empty", "non-hex", "uppercase", "too-long", "negative", "lead-space",
         "trail-space", "0x-prefix", "newline"],
)  # fmt: skip
def test_bad_markers_are_refused(marker: str) -> None:
    with pytest.raises(ValueError, match="marker"):
        ids.parse_marker(marker)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a" * 24, True), ("0" * 24, True), ("a" * 23, False), ("A" * 24, False), ("g" * 24, False)],
)
def test_is_hex24(value: str, expected: bool) -> None:
    assert ids.is_hex24(value) is expected


# --- time formats ------------------------------------------------------------------------


def test_compact_format() -> None:
    assert timefmt.to_compact(EXAMPLE_MS) == "20151212T121212Z"
    assert timefmt.to_compact(EXAMPLE_MS + 999) == "20151212T121212Z"  # seconds, truncated
    assert timefmt.from_compact("20151212T121212Z") == EXAMPLE_MS
    assert timefmt.to_compact(0) == "19700101T000000Z"


@given(st.integers(min_value=0, max_value=253402300799))  # through 9999-12-31T23:59:59Z
def test_compact_round_trips_whole_seconds(epoch_s: int) -> None:
    epoch_ms = epoch_s * 1000
    assert timefmt.from_compact(timefmt.to_compact(epoch_ms)) == epoch_ms


@pytest.mark.parametrize(
    "text",
    ["", "20151212T121212", "2015-12-12T12:12:12Z", " 20151212T121212Z", "20151212T121212Z ",
     "20151312T121212Z", "20151212T251212Z", "2015121212T1212Z"],
)  # fmt: skip
def test_compact_refuses_other_shapes(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - strptime's messages are not ours
        timefmt.from_compact(text)


@pytest.mark.parametrize("text", ["2015121T121212Z", "20151212T1212Z", "20151212t121212z"])
def test_compact_refuses_short_fields_and_lowercase(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        timefmt.from_compact(text)


@pytest.mark.parametrize(
    ("epoch_ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (EXAMPLE_MS + 5, "2015-12-12T12:12:12.005Z"),
        (EXAMPLE_MS + 123, "2015-12-12T12:12:12.123Z"),
        (EXAMPLE_MS + 999, "2015-12-12T12:12:12.999Z"),
    ],
)
def test_iso_ms_format(epoch_ms: int, text: str) -> None:
    assert timefmt.to_iso_ms(epoch_ms) == text


@given(st.integers(min_value=0, max_value=253402300799999))
def test_iso_ms_keeps_the_millisecond(epoch_ms: int) -> None:
    text = timefmt.to_iso_ms(epoch_ms)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
    assert int(text[-4:-1]) == epoch_ms % 1000
    assert timefmt.to_compact(epoch_ms) == text[:19].replace("-", "").replace(":", "") + "Z"


def test_hour_stamp() -> None:
    assert timefmt.to_hour_stamp(EXAMPLE_MS) == "2015121212"
    assert timefmt.to_hour_stamp(EXAMPLE_MS + 47 * 60 * 1000) == "2015121212"
    assert timefmt.to_hour_stamp(EXAMPLE_MS + 48 * 60 * 1000) == "2015121213"


# --- vault -------------------------------------------------------------------------------

KEY = bytes(range(KEY_BYTES))
OTHER_KEY = bytes(reversed(range(KEY_BYTES)))


def test_vault_round_trip() -> None:
    vault = SecretVault(KEY)
    blob = vault.encrypt("s3cret-ß")
    assert b"s3cret" not in blob
    assert vault.decrypt(blob) == "s3cret-ß"
    assert vault.encrypt("s3cret-ß") != blob  # a fresh nonce every time
    assert SecretVault(KEY).decrypt(blob) == "s3cret-ß"


def test_vault_refuses_the_wrong_key() -> None:
    blob = SecretVault(KEY).encrypt("secret")
    with pytest.raises(VaultKeyError):
        SecretVault(OTHER_KEY).decrypt(blob)


def test_vault_refuses_a_tampered_blob() -> None:
    blob = bytearray(SecretVault(KEY).encrypt("secret"))
    blob[-1] ^= 0x01
    with pytest.raises(VaultKeyError):
        SecretVault(KEY).decrypt(bytes(blob))


def test_vault_refuses_a_truncated_blob() -> None:
    with pytest.raises(VaultKeyError):
        SecretVault(KEY).decrypt(b"short")


def test_key_check_identifies_the_key() -> None:
    assert SecretVault(KEY).key_check == SecretVault(KEY).key_check
    assert SecretVault(KEY).key_check != SecretVault(OTHER_KEY).key_check


@pytest.mark.parametrize("length", [0, 16, KEY_BYTES + 1])
def test_vault_refuses_keys_of_the_wrong_length(length: int) -> None:
    with pytest.raises(VaultKeyError):
        SecretVault(b"k" * length)


def test_decode_key() -> None:
    assert decode_key(base64.b64encode(KEY).decode() + "\n") == KEY
    with pytest.raises(VaultKeyError, match="base64"):
        decode_key("not base64!")
    with pytest.raises(VaultKeyError, match="32 bytes"):
        decode_key(base64.b64encode(b"short").decode())


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "secret.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert decode_key(path.read_text()) == key
    assert load_or_create_key(path) == key


def test_key_file_with_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("garbage")
    with pytest.raises(VaultKeyError):
        load_or_create_key(path)


def test_hashed_secrets_verify() -> None:
    stored = hash_secret("app-secret")
    assert verify_secret("app-secret", stored)
    assert not verify_secret("app-secreT", stored)
    assert not verify_secret("", stored)
    assert hash_secret("app-secret") != stored  # salted
    assert "app-secret" not in stored


@pytest.mark.parametrize("stored", ["", "no-dollar", "salt$", "$"])
def test_malformed_hashes_never_verify(stored: str) -> None:
    assert not verify_secret("app-secret", stored)


def test_token_hash_is_a_stable_sha256() -> None:
    assert hash_token("token") == hash_token("token")
    assert re.fullmatch(r"[0-9a-f]{64}", hash_token("token"))
    assert hash_token("token") != hash_token("token2")


# --- settings ----------------------------------------------------------------------------


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETBATCH_HTTP_PORT", "9090")
    monkeypatch.setenv("FLEETBATCH_DATABASE", "postgresql://u@db:5432/fb")
    settings = Settings()
    assert settings.http_port == 9090
    assert settings.database == "postgresql://u@db:5432/fb"
    assert settings.database_url == "postgresql+asyncpg://u@db:5432/fb"
    assert not settings.is_embedded_database


def test_constructor_values_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETBATCH_HTTP_PORT", "9090")
    assert Settings(http_port=7000).http_port == 7000
    assert load_settings(http_port=7000).http_port == 7000
    assert load_settings(http_port=None).http_port == 9090  # a flag not given


def test_settings_defaults(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.http_port == 8080
    assert settings.database is None
    assert settings.is_embedded_database
    assert settings.sqlite_path == tmp_path / "fleetbatch.db"
    assert settings.database_url == f"sqlite+aiosqlite:///{(tmp_path / 'fleetbatch.db').resolve()}"


def test_blank_database_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETBATCH_DATABASE", "")
    assert Settings().database is None


@pytest.mark.parametrize(
    "overrides",
    [{"http_port": 70000}, {"http_port": -1}, {"db_pool_size": 0}, {"no_such_option": 1}],
)
def test_settings_refuse_bad_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("PostgreSQL://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///var/lib/fb.db", "sqlite+aiosqlite:///var/lib/fb.db"),
        ("sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        ("sqlite+aiosqlite:////abs/fb.db", "sqlite+aiosqlite:////abs/fb.db"),
    ],
)
def test_normalize_database_url(url: str, normalized: str) -> None:
    assert normalize_database_url(url) == normalized


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://u@h/db", "unsupported database"),
        ("mongodb://h/db", "unsupported database"),
        ("/var/lib/fb.db", "not a database URL"),
        ("", "not a database URL"),
    ],
)
def test_normalize_database_url_refuses_others(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_database_url(url)
