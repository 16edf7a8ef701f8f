"""The pools' metrics and events: OpenTelemetry, Prometheus and structured logs.

One job per module:

* :mod:`~multipool.metrics.names` -- every metric: name, unit, meaning, source;
* :mod:`~multipool.metrics.recorder` -- :class:`PoolRecorder`, what a pool tells
  its metrics where things happen (connect, wait, use, timeout, invalidation);
* :mod:`~multipool.metrics.readings` -- the pools whose stats the observed
  metrics read;
* :mod:`~multipool.metrics.otel` -- the OpenTelemetry instruments
  (``db.client.connection.*``), through the API;
* :mod:`~multipool.metrics.prometheus` -- the Prometheus metrics, one process
  or multiprocess (``PROMETHEUS_MULTIPROC_DIR``), and the scrape's exposition;
* :mod:`~multipool.metrics.publisher` -- multiprocess mode: each process
  writes its observed values periodically;
* :mod:`~multipool.metrics.events` -- pool events as log records with their
  fields in ``extra``.

``docs/metrics.md`` is the user's guide. This package imports a metrics
library only once the application uses it (see
:mod:`~multipool.metrics.recorder`), and nothing of it at import time (the
pools import :mod:`~multipool.metrics.events`).
"""
