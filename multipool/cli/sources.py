"""Where the aliases come from: the Django settings when ``DJANGO_SETTINGS_MODULE``
is set, else the environment (``multipool.databases()``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multipool.cli.masking import Masker
from multipool.cli.output import UsageError, error_text
from multipool.config import ENGINES, engine_vendor
from multipool.config import databases as env_databases
from multipool.errors import ConfigurationError

#: the port of a server when the settings name none
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


@dataclass
class Source:
    """The ``DATABASES`` (and routers) the command works on."""

    label: str
    databases: dict[str, dict[str, Any]]
    routers: list[Any] = field(default_factory=list)
    from_settings: bool = False


def load_source(masker: Masker | None = None) -> Source:
    """Django settings when ``DJANGO_SETTINGS_MODULE`` is set, else the environment
    (read from the current directory: ``.env`` / ``settings.ini`` upward)."""
    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if module:
        from django.conf import settings

        try:
            databases = dict(settings.DATABASES)
            routers = list(getattr(settings, "DATABASE_ROUTERS", []))
        except ConfigurationError:
            raise
        except Exception as exc:
            raise UsageError(
                f"cannot load the Django settings {module!r} (DJANGO_SETTINGS_MODULE): "
                f"{error_text(exc)}"
            ) from None
        source = Source(f"Django settings {module}", databases, routers, from_settings=True)
    else:
        source = Source("environment", env_databases(search_path=os.getcwd(), validate=False))
    if masker is not None:
        masker.add_databases(source.databases)
    return source


def setup_django(source: Source | None = None) -> None:
    """Make Django usable: the user's settings, or a minimal configuration of our own."""
    import django
    from django.conf import settings

    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        try:
            django.setup()
        except ConfigurationError:
            raise
        except Exception as exc:
            raise UsageError(f"cannot set up Django: {error_text(exc)}") from None
        return
    if settings.configured:
        return
    databases = source.databases if source is not None else load_source().databases
    settings.configure(
        DATABASES=copy.deepcopy(databases),
        INSTALLED_APPS=["multipool"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def ensure_settings() -> None:
    """Django set up enough for database wrappers (no app of ours needed)."""
    import django
    from django.apps import apps
    from django.conf import settings

    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        setup_django()
        return
    if not settings.configured:
        settings.configure(USE_TZ=True, TIME_ZONE="UTC", INSTALLED_APPS=[], DATABASES={})
    if not apps.ready:
        django.setup()


def engine_of(entry: Mapping[str, Any]) -> str:
    """The entry's ENGINE (``""`` when missing)."""
    engine = entry.get("ENGINE")
    return engine if isinstance(engine, str) else ""


def is_multipool(entry: Mapping[str, Any]) -> bool:
    """Whether the alias uses one of multipool's backends (so it has a pool)."""
    return engine_of(entry) in ENGINES.values()


def vendor_of(entry: Mapping[str, Any]) -> str | None:
    """``postgresql``, ``mysql`` or ``sqlite`` for the engines multipool knows, else None."""
    return engine_vendor(engine_of(entry))


def vendor_label(entry: Mapping[str, Any]) -> str:
    """The vendor for display: :func:`vendor_of`, else the engine's last dotted component."""
    return vendor_of(entry) or engine_of(entry).rsplit(".", 1)[-1] or "?"


def select_aliases(source: Source, aliases: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """The ``--alias`` ones (every alias when none is given); an unknown one is a usage error."""
    if not aliases:
        return dict(source.databases)
    unknown = [a for a in aliases if a not in source.databases]
    if unknown:
        known = ", ".join(source.databases) or "none"
        raise UsageError(f"unknown alias {', '.join(unknown)} (configured: {known})")
    return {a: source.databases[a] for a in aliases}
