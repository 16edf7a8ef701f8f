"""Database settings: from the environment, or from a Django ``DATABASES`` entry.

Two entry points produce the same normalized, hashable :class:`DatabaseSpec`:

* :func:`read_environment` / :func:`databases` read every alias from
  environment variables (through python-decouple: ``os.environ``, then a
  ``.env`` or ``settings.ini`` file found from the caller's directory upward);
* :func:`spec_from_settings` reads one ``DATABASES`` entry, hand-written or
  produced by :meth:`DatabaseSpec.to_django` (``spec_from_settings(a,
  spec.to_django()) == spec``).

Every environment key is listed in :data:`ENV_KEYS` (``docs/configuration.md``
is generated from it by :func:`env_keys_markdown`). Every error is a
:class:`~multipool.errors.ConfigurationError` naming the alias, the variable
and the fix, and never contains a password, a key passphrase or key material.

Modules: :mod:`~multipool.config.specs` (the specs), :mod:`~multipool.config.keys`
(the environment keys), :mod:`~multipool.config.values` (value parsers),
:mod:`~multipool.config.urls` (database URLs), :mod:`~multipool.config.options`
(``OPTIONS`` -> driver, TLS and pool values), :mod:`~multipool.config.entries`
(a ``DATABASES`` entry -> spec), :mod:`~multipool.config.source` (where
environment values come from) and :mod:`~multipool.config.environment` (the
environment -> specs and entries).
"""

from __future__ import annotations

from multipool.config.entries import (
    engine_vendor,
    problem_from_record,
    problem_record,
    spec_from_settings,
    unusable_entry,
)
from multipool.config.environment import databases, read_environment, validate_spec
from multipool.config.keys import DEFAULT_URL, ENV_KEYS, EnvKey, env_keys_markdown, env_prefix
from multipool.config.source import ALIAS_RE, find_settings_file
from multipool.config.specs import (
    ENGINES,
    POOL_OPTION_KEYS,
    POOL_RESETS,
    POOLERS,
    DatabaseSpec,
    PoolSpec,
    freeze,
    thaw,
)
from multipool.config.urls import SCHEMES, scheme_names
from multipool.tls import MultipoolWarning

__all__ = [
    "ALIAS_RE",
    "DEFAULT_URL",
    "ENGINES",
    "ENV_KEYS",
    "POOLERS",
    "POOL_OPTION_KEYS",
    "POOL_RESETS",
    "SCHEMES",
    "DatabaseSpec",
    "EnvKey",
    "MultipoolWarning",
    "PoolSpec",
    "databases",
    "engine_vendor",
    "env_keys_markdown",
    "env_prefix",
    "find_settings_file",
    "freeze",
    "problem_from_record",
    "problem_record",
    "read_environment",
    "scheme_names",
    "spec_from_settings",
    "thaw",
    "unusable_entry",
    "validate_spec",
]
