"""Django app: ``INSTALLED_APPS += ["multipool"]`` registers system checks and commands."""

from __future__ import annotations

from django.apps import AppConfig


class MultipoolConfig(AppConfig):
    name = "multipool"
    verbose_name = "multipool"
    default = True

    def ready(self) -> None:
        # Importing the module registers the checks (see multipool.checks).
        from multipool import checks  # noqa: F401
