"""The pools' metrics through the OpenTelemetry API (``pip install multipool[opentelemetry]``).

The instruments are created once, on the meter ``multipool`` of the global
MeterProvider (``opentelemetry.metrics``), at the first record after the
application has imported ``opentelemetry.metrics`` (:func:`in_use`): setting up
the SDK or an instrumentation imports it. Until then nothing of OpenTelemetry
is imported -- a process that has the API installed but does not use it does
not load it. Until the application sets a provider the API hands out proxies,
which start delivering to the provider once it is set: an application that
configures OpenTelemetry before or after its first request receives the
metrics with no multipool setting. :func:`set_meter_provider` gives multipool a
provider of its own instead (tests, or an application that keeps library
metrics apart).

* the **observed** metrics (:data:`~multipool.metrics.names.OBSERVED`) are
  observable up-down counters whose callbacks read every pool's stats when
  the reader collects: no work per request;
* the **counted** ones are counters, added to where the event happens;
* the **timed** ones are histograms, recorded where the thing happens.

Without ``opentelemetry-api`` nothing here is imported and pools get no
OpenTelemetry recording.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterable
from functools import partial
from typing import Any

from multipool import __version__
from multipool.metrics.names import (
    BUCKETS,
    CREATE_TIME,
    INVALIDATIONS,
    OBSERVED,
    STATE,
    TIMEOUTS,
    USE_TIME,
    WAIT_TIME,
    Counted,
    Observed,
    Timed,
)
from multipool.metrics.readings import pool_readings

__all__ = ["OtelInstruments", "current", "in_use", "instruments", "set_meter_provider"]

METER_NAME = "multipool"
#: the module whose presence says the application uses OpenTelemetry's metrics
API_MODULE = "opentelemetry.metrics"

#: the instruments pools record to now (None: not created yet, or no OpenTelemetry)
current: OtelInstruments | None = None
_provider: Any = None  # the provider given to set_meter_provider(), else the global one
_unavailable = False
#: provider -> its instruments (a meter hands out an instrument once per name: its
#: callbacks are those of the first)
_made: weakref.WeakKeyDictionary[Any, OtelInstruments] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class OtelInstruments:
    """multipool's instruments on one meter."""

    def __init__(self, meter: Any) -> None:
        self.create_time = _histogram(meter, CREATE_TIME)
        self.wait_time = _histogram(meter, WAIT_TIME)
        self.use_time = _histogram(meter, USE_TIME)
        self.timeouts = _counter(meter, TIMEOUTS)
        self.invalidations = _counter(meter, INVALIDATIONS)
        for observed in OBSERVED:
            meter.create_observable_up_down_counter(
                observed.name,
                callbacks=[partial(self._observe, observed)],
                unit=observed.unit,
                description=observed.description,
            )

    def _observe(self, observed: Observed, options: Any) -> Iterable[Any]:
        """The callback of one observed metric: a value per pool (and state)."""
        from opentelemetry.metrics import Observation

        if current is not self:  # replaced by set_meter_provider(): the new ones report
            return []
        found = []
        for stats, pool in pool_readings():
            for state, value in observed.readings(stats):
                attributes = pool.attributes if state is None else {**pool.attributes, STATE: state}
                found.append(Observation(value, attributes))
        return found


def _histogram(meter: Any, timed: Timed) -> Any:
    return meter.create_histogram(
        timed.name,
        unit=timed.unit,
        description=timed.description,
        explicit_bucket_boundaries_advisory=list(BUCKETS),
    )


def _counter(meter: Any, counted: Counted) -> Any:
    return meter.create_counter(counted.name, unit=counted.unit, description=counted.description)


def in_use() -> OtelInstruments | None:
    """The instruments once the application has imported OpenTelemetry's metrics API
    (created then); ``None`` before, importing nothing."""
    if current is not None or API_MODULE not in sys.modules:
        return current
    return instruments()


def instruments() -> OtelInstruments | None:
    """The instruments, created on first use; ``None`` without ``opentelemetry-api``."""
    global current, _unavailable
    if current is not None or _unavailable:
        return current
    with _lock:
        if current is None and not _unavailable:
            try:
                from opentelemetry import metrics
            except ImportError:
                _unavailable = True
                return None
            provider = _provider if _provider is not None else metrics.get_meter_provider()
            made = _made.get(provider)
            if made is None:
                made = _made[provider] = OtelInstruments(
                    provider.get_meter(METER_NAME, __version__)
                )
            current = made
    return current


def set_meter_provider(provider: Any) -> None:
    """Report to ``provider`` (an OpenTelemetry ``MeterProvider``) from now on, every
    pool alike; ``None``: to the global provider again. Meant for tests and for
    applications that keep library metrics apart; the usual way is the global
    provider (``opentelemetry.metrics.set_meter_provider``), which needs nothing here."""
    global current, _provider
    with _lock:
        _provider = provider
        current = None
    instruments()
