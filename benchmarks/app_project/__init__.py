"""The Django project of the application-server benchmark (:mod:`benchmarks.app_servers`).

One settings module for every configuration: ``MPBENCH_CONFIG`` names it, and
``DATABASES["default"]`` is built from the same ``DATABASE_*`` environment
variables for all of them (see :func:`benchmarks.app_project.settings.database_entry`).
"""
