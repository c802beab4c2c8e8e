"""How a simulated device behaves, and the `--behavior` mini-language that sets it. Pure: no I/O.

A value of `--behavior` is `[selector:]key=value[,key=value...]`; the selector picks devices:

- `*` (the default): every device;
- `N%`: a deterministic `N` percent of the fleet, chosen with the seed;
- a glob on the device id (`dev-00*`, `*_pump-?`);
- anything else: one device id.

Values apply in order, later ones overriding earlier ones per device:

    --behavior latency=uniform:5,50 --behavior 10%:silent=true --behavior 'dev-00*:fail_rate=0.5'

Per-request randomness (latency, failure) is drawn from a hash of (seed, device id, request
id), not from a shared generator, so a run with the same seed gives the same device the same
answer to the same request whatever order requests arrive in.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any, Literal

LatencyKind = Literal["constant", "uniform", "normal", "exp"]
LATENCY_KINDS: tuple[LatencyKind, ...] = ("constant", "uniform", "normal", "exp")

# Huawei's device SDKs back off 1 s doubling to 30 s between reconnects (spec: device-mqtt §1.1)
DEFAULT_BACKOFF_MIN_S = 1.0
DEFAULT_BACKOFF_MAX_S = 30.0
DEFAULT_FAIL_CODE = 1  # the SDK's "Fail" (spec: device-mqtt §3)

_U64 = float(1 << 64)
# inv_cdf is undefined at 0 and 1
_U_EPSILON = 1e-12


@dataclass(frozen=True, slots=True)
class Latency:
    """A reply latency distribution in milliseconds; samples are clipped at 0.

    `constant:a`, `uniform:a,b` (a <= b), `normal:a,b` (mean a, stddev b), `exp:a` (mean a).
    """

    kind: LatencyKind = "constant"
    a_ms: float = 0.0
    b_ms: float = 0.0

    @property
    def is_zero(self) -> bool:
        """Always 0 ms: answers go out inline, with no timer."""
        return self.kind == "constant" and self.a_ms == 0.0

    def sample_s(self, u: float) -> float:
        """The latency in seconds for a uniform draw `u` in [0, 1)."""
        if self.kind == "constant":
            ms = self.a_ms
        elif self.kind == "uniform":
            ms = self.a_ms + (self.b_ms - self.a_ms) * u
        elif self.kind == "normal":
            if self.b_ms == 0.0:
                ms = self.a_ms
            else:
                u = min(max(u, _U_EPSILON), 1.0 - _U_EPSILON)
                ms = NormalDist(self.a_ms, self.b_ms).inv_cdf(u)
        else:
            ms = -self.a_ms * math.log1p(-u)
        return max(ms, 0.0) / 1000.0

    def __str__(self) -> str:
        if self.kind in ("constant", "exp"):
            return f"{self.kind}:{self.a_ms:g}"
        return f"{self.kind}:{self.a_ms:g},{self.b_ms:g}"


@dataclass(frozen=True, slots=True)
class Behavior:
    """What one simulated device does; the default answers everything at once, successfully."""

    latency: Latency = field(default_factory=Latency)
    fail_rate: float = 0.0  # fraction of requests answered with `fail_code`
    fail_code: int = DEFAULT_FAIL_CODE
    # never answers commands and property requests; still PUBACKs, which is protocol level
    silent: bool = False
    flaky_s: float = 0.0  # mean seconds between connection drops (exponential); 0 = never
    backoff_min_s: float = DEFAULT_BACKOFF_MIN_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    report_interval_s: float = 0.0  # periodic property reports; 0 = never
    shadow_on_connect: bool = False  # ask for the device shadow after every connect

    @property
    def needs_draws(self) -> bool:
        """Whether answering needs a per-request random draw (the fast path does not)."""
        return self.fail_rate > 0.0 or not self.latency.is_zero

    def backoff_s(self, attempt: int, jitter: float) -> float:
        """Delay before reconnect `attempt` (0-based): min doubling to max, plus 0-20% jitter."""
        base = min(self.backoff_max_s, self.backoff_min_s * 2.0 ** min(attempt, 32))
        return min(self.backoff_max_s, base * (1.0 + 0.2 * jitter))


DEFAULT_BEHAVIOR = Behavior()


def draws(key: bytes, request_id: str) -> tuple[float, float]:
    """Two independent uniform draws in [0, 1) for one request: (latency, failure).

    `key` is `draw_key(seed, device_id)`, computed once per device.
    """
    digest = hashlib.blake2b(request_id.encode(), digest_size=16, key=key).digest()
    return (
        int.from_bytes(digest[:8]) / _U64,
        int.from_bytes(digest[8:]) / _U64,
    )


def draw_key(seed: int, device_id: str) -> bytes:
    """The per-device key of `draws` (at most 64 bytes, as blake2b wants)."""
    return hashlib.blake2b(f"{seed}/{device_id}".encode(), digest_size=32).digest()


# --- the --behavior mini-language -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """Which devices a spec applies to: all, one id, a glob, or a percentage of the fleet."""

    kind: Literal["all", "device", "glob", "percent"]
    text: str = "*"
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class BehaviorSpec:
    """One parsed `--behavior` value: a selector and the fields it sets."""

    selector: Selector
    changes: tuple[tuple[str, Any], ...]
    silent_rate: float | None = None  # make this fraction of the selected devices silent
    text: str = ""


def _float(key: str, text: str, *, low: float = 0.0, high: float = math.inf) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{key} must be a number, not {text!r}") from None
    if not (low <= value <= high) or math.isnan(value):
        bound = f"between {low:g} and {high:g}" if high != math.inf else f">= {low:g}"
        raise ValueError(f"{key} must be {bound}, not {text!r}")
    return value


def _bool(key: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{key} must be true or false, not {text!r}")


def _int(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {text!r}") from None


def parse_latency(text: str) -> Latency:
    """`12` (constant ms), `constant:12`, `uniform:5,50`, `normal:20,5` or `exp:20`."""
    kind, sep, params = text.partition(":")
    if not sep:
        return Latency("constant", _float("latency", kind))
    if kind not in LATENCY_KINDS:
        raise ValueError(f"latency kind must be one of {', '.join(LATENCY_KINDS)}, not {kind!r}")
    values = [_float(f"latency {kind}", part) for part in params.split(",")]
    if kind in ("constant", "exp"):
        if len(values) != 1:
            raise ValueError(f"latency {kind} takes one value in ms, e.g. {kind}:20")
        return Latency(kind, values[0])
    if len(values) != 2:
        example = "uniform:5,50" if kind == "uniform" else "normal:20,5"
        raise ValueError(f"latency {kind} takes two values in ms, e.g. {example}")
    if kind == "uniform" and values[0] > values[1]:
        raise ValueError(f"latency uniform needs low <= high, not {params!r}")
    return Latency(kind, values[0], values[1])


_Parser = Callable[[str, str], tuple[str, Any]]

_KEYS: dict[str, _Parser] = {
    "latency": lambda k, v: ("latency", parse_latency(v)),
    "fail_rate": lambda k, v: ("fail_rate", _float(k, v, high=1.0)),
    "fail_code": lambda k, v: ("fail_code", _int(k, v)),
    "silent": lambda k, v: ("silent", _bool(k, v)),
    "silent_rate": lambda k, v: ("silent_rate", _float(k, v, high=1.0)),
    "flaky": lambda k, v: ("flaky_s", _float(k, v)),
    "backoff_min": lambda k, v: ("backoff_min_s", _float(k, v, low=0.001)),
    "backoff_max": lambda k, v: ("backoff_max_s", _float(k, v, low=0.001)),
    "report_interval": lambda k, v: ("report_interval_s", _float(k, v)),
    "shadow_on_connect": lambda k, v: ("shadow_on_connect", _bool(k, v)),
}
# the unit-suffixed spellings of the field names work too
for _name in ("flaky", "backoff_min", "backoff_max", "report_interval"):
    _KEYS[f"{_name}_s"] = _KEYS[_name]

BEHAVIOR_KEYS = tuple(sorted(_KEYS))

_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)%")


def parse_selector(text: str) -> Selector:
    """`*`, `N%`, a glob (`*`, `?` or `[`) on the device id, or one device id."""
    if text in ("", "*"):
        return Selector("all")
    match = _PERCENT.fullmatch(text)
    if match:
        return Selector("percent", text, _float("selector percentage", match[1], high=100.0))
    if text.endswith("%"):
        raise ValueError(f"selector {text!r}: a percentage is a number 0-100 then %")
    if any(char in text for char in "*?["):
        return Selector("glob", text)
    return Selector("device", text)


def parse_behavior(text: str) -> BehaviorSpec:
    """Parse one `--behavior` value; raises ValueError naming what is wrong."""
    stripped = text.strip()
    equals = stripped.find("=")
    colon = stripped.find(":")
    selector = Selector("all")
    body = stripped
    # a selector ends at the first ':' when it comes before the first '=' (latency values hold ':')
    if 0 <= colon < equals:
        selector = parse_selector(stripped[:colon].strip())
        body = stripped[colon + 1 :]
    if equals < 0:
        raise ValueError(f"behavior {text!r}: expected [selector:]key=value[,key=value...]")
    # split on ',' but keep commas inside a value ("latency=uniform:5,50")
    items: list[str] = []
    for part in body.split(","):
        if "=" in part or not items:
            items.append(part)
        else:
            items[-1] += "," + part
    changes: dict[str, Any] = {}
    silent_rate: float | None = None
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        value = value.strip()
        if not sep or not key or not value:
            raise ValueError(f"behavior {text!r}: {item.strip()!r} is not key=value")
        parser = _KEYS.get(key)
        if parser is None:
            raise ValueError(
                f"behavior {text!r}: unknown key {key!r} (known: {', '.join(BEHAVIOR_KEYS)})"
            )
        try:
            name, parsed = parser(key, value)
        except ValueError as exc:
            raise ValueError(f"behavior {text!r}: {exc}") from None
        if name == "silent_rate":
            silent_rate = parsed
        else:
            changes[name] = parsed
    return BehaviorSpec(selector, tuple(changes.items()), silent_rate, text)


def parse_behaviors(texts: Sequence[str]) -> list[BehaviorSpec]:
    """Parse every `--behavior` value, in order."""
    return [parse_behavior(text) for text in texts]


def _select(selector: Selector, device_ids: Sequence[str], rng_seed: str) -> Sequence[int]:
    n = len(device_ids)
    if selector.kind == "all":
        return range(n)
    if selector.kind == "percent":
        count = round(n * selector.percent / 100.0)
        return sorted(random.Random(rng_seed).sample(range(n), count))
    if selector.kind == "glob":
        match = re.compile(fnmatch.translate(selector.text)).match
        return [i for i, device_id in enumerate(device_ids) if match(device_id)]
    return [i for i, device_id in enumerate(device_ids) if device_id == selector.text]


def resolve(
    device_ids: Sequence[str],
    specs: Sequence[BehaviorSpec],
    seed: int,
    base: Behavior = DEFAULT_BEHAVIOR,
) -> list[Behavior]:
    """The behaviour of each device, index-aligned with `device_ids`.

    Devices that end up alike share one `Behavior` instance, so 100k devices cost a list.
    """
    result = [base] * len(device_ids)
    for position, spec in enumerate(specs):
        selected = _select(spec.selector, device_ids, f"{seed}/{position}/select")
        silenced: set[int] = set()
        if spec.silent_rate is not None:
            count = round(len(selected) * spec.silent_rate)
            rng = random.Random(f"{seed}/{position}/silent_rate")
            silenced = set(rng.sample(list(selected), count))
        changes = dict(spec.changes)
        # one derived instance per (previous instance, silenced?) keeps them shared
        derived: dict[tuple[int, bool], Behavior] = {}
        for index in selected:
            current = result[index]
            silence = index in silenced
            cache_key = (id(current), silence)
            updated = derived.get(cache_key)
            if updated is None:
                updated = replace(current, **changes)
                if silence:
                    updated = replace(updated, silent=True)
                derived[cache_key] = updated
            result[index] = updated
    return result


def resolve_texts(device_ids: Sequence[str], texts: Sequence[str], seed: int) -> list[Behavior]:
    """`resolve` over unparsed `--behavior` values; raises ValueError on bad syntax."""
    return resolve(device_ids, parse_behaviors(texts), seed)
