"""The router's Django settings (``MULTIPOOL_READ_STRATEGY``, ``MULTIPOOL_REPLICA_*``,
``MULTIPOOL_PIN_*``), parsed once and re-parsed only when a value changes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["STRATEGIES", "RouterSettings", "router_settings"]

#: read strategies (``MULTIPOOL_READ_STRATEGY``)
STRATEGIES = ("round-robin", "random", "least-busy")

_COOKIE_NAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
)



@dataclass(frozen=True)
class RouterSettings:
    """The router's Django settings, parsed (see ``docs/routing.md``)."""

    strategy: str = "round-robin"  # MULTIPOOL_READ_STRATEGY
    backoff: float = 1.0  # MULTIPOOL_REPLICA_BACKOFF
    backoff_max: float = 5.0  # MULTIPOOL_REPLICA_BACKOFF_MAX
    max_lag: float | None = None  # MULTIPOOL_REPLICA_MAX_LAG
    lag_interval: float = 5.0  # MULTIPOOL_REPLICA_LAG_INTERVAL
    position_interval: float = 0.25  # MULTIPOOL_REPLICA_POSITION_INTERVAL
    causal_reads: bool = True  # MULTIPOOL_CAUSAL_READS
    causal_max_age: float = 60.0  # MULTIPOOL_CAUSAL_MAX_AGE
    pin_seconds: float = 0.0  # MULTIPOOL_PIN_SECONDS
    pin_cookie: str = "multipool_pin"  # MULTIPOOL_PIN_COOKIE
    pin_unsafe_methods: bool = True  # MULTIPOOL_PIN_UNSAFE_METHODS

    @property
    def carries_positions(self) -> bool:
        """Whether the middleware's cookie carries positions (else a time pin, or nothing)."""
        return self.causal_reads and self.pin_seconds <= 0


_SETTING_NAMES: tuple[tuple[str, str], ...] = (
    ("strategy", "MULTIPOOL_READ_STRATEGY"),
    ("backoff", "MULTIPOOL_REPLICA_BACKOFF"),
    ("backoff_max", "MULTIPOOL_REPLICA_BACKOFF_MAX"),
    ("max_lag", "MULTIPOOL_REPLICA_MAX_LAG"),
    ("lag_interval", "MULTIPOOL_REPLICA_LAG_INTERVAL"),
    ("position_interval", "MULTIPOOL_REPLICA_POSITION_INTERVAL"),
    ("causal_reads", "MULTIPOOL_CAUSAL_READS"),
    ("causal_max_age", "MULTIPOOL_CAUSAL_MAX_AGE"),
    ("pin_seconds", "MULTIPOOL_PIN_SECONDS"),
    ("pin_cookie", "MULTIPOOL_PIN_COOKIE"),
    ("pin_unsafe_methods", "MULTIPOOL_PIN_UNSAFE_METHODS"),
)
_MISSING: Any = object()
_settings_cache: tuple[tuple[Any, ...], RouterSettings] | None = None


def _seconds(name: str, value: Any, *, allow_none: bool = False, positive: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number of seconds" + (" or None" if allow_none else "")
        raise ImproperlyConfigured(f"settings.{name} must be {kind}, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ImproperlyConfigured(
            f"settings.{name} must be a finite number {bound}, not {value!r}"
        )
    return number


def _parse_settings(raw: tuple[Any, ...]) -> RouterSettings:
    defaults = RouterSettings()
    values = {
        attr: (getattr(defaults, attr) if value is _MISSING else value)
        for (attr, _), value in zip(_SETTING_NAMES, raw, strict=True)
    }
    names = dict(_SETTING_NAMES)
    strategy = values["strategy"]
    normalized = str(strategy).strip().lower().replace("_", "-") if strategy else ""
    if normalized == "roundrobin":
        normalized = "round-robin"
    if normalized not in STRATEGIES:
        raise ImproperlyConfigured(
            f"settings.{names['strategy']} is {strategy!r}; use one of {', '.join(STRATEGIES)}"
        )
    cookie = values["pin_cookie"]
    if not isinstance(cookie, str) or not cookie or not set(cookie) <= _COOKIE_NAME_CHARS:
        raise ImproperlyConfigured(
            f"settings.{names['pin_cookie']} must be a non-empty cookie name, not {cookie!r}"
        )
    backoff = _seconds(names["backoff"], values["backoff"])
    backoff_max = _seconds(names["backoff_max"], values["backoff_max"])
    if backoff_max < backoff:
        raise ImproperlyConfigured(
            f"settings.{names['backoff_max']} ({backoff_max:g}) is below "
            f"settings.{names['backoff']} ({backoff:g})"
        )
    return RouterSettings(
        strategy=normalized,
        backoff=backoff,
        backoff_max=backoff_max,
        max_lag=_seconds(names["max_lag"], values["max_lag"], allow_none=True, positive=True),
        lag_interval=_seconds(names["lag_interval"], values["lag_interval"]),
        position_interval=_seconds(names["position_interval"], values["position_interval"]),
        causal_reads=bool(values["causal_reads"]),
        causal_max_age=_seconds(
            names["causal_max_age"], values["causal_max_age"], positive=True
        ),
        pin_seconds=_seconds(names["pin_seconds"], values["pin_seconds"]),
        pin_cookie=cookie,
        pin_unsafe_methods=bool(values["pin_unsafe_methods"]),
    )


def router_settings() -> RouterSettings:
    """The current router settings (re-parsed only when a value changed)."""
    global _settings_cache
    raw = tuple(getattr(settings, name, _MISSING) for _, name in _SETTING_NAMES)
    cached = _settings_cache
    if cached is not None and cached[0] == raw:
        return cached[1]
    parsed = _parse_settings(raw)
    _settings_cache = (raw, parsed)
    return parsed
