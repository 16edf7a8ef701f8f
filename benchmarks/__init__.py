"""Benchmarks of multipool against stock Django and the other Django pools.

* :mod:`benchmarks.request_cycle` -- Django's request cycle (``request_started``,
  a query, ``request_finished``) from several threads, every configuration
  against the same real PostgreSQL and MySQL/MariaDB servers, TLS off and
  verify-full;
* :mod:`benchmarks.checkout_micro` -- the cost of one checkout + checkin.

See ``benchmarks/README.md``.
"""
