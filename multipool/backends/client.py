"""``manage.py dbshell`` with certificates and keys given as PEM text.

On Linux such text lives in in-memory files whose ``/proc/self/fd/N`` paths the
settings hold (:mod:`multipool.tls.pem`). Their descriptors are closed on
``exec``, so ``psql`` or ``mysql`` started by ``dbshell`` could not open them.
The shell is started here with exactly those descriptors passed on, under the
same numbers, so the same paths work in it; no other program gets them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

from django.db.backends.base.client import BaseDatabaseClient

from multipool.tls.pem import inherited_descriptor


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def pem_descriptors(settings_dict: dict[str, Any]) -> tuple[int, ...]:
    """The in-memory PEM files an alias's OPTIONS name (MySQL nests them in ``ssl``)."""
    found = (inherited_descriptor(text) for text in _strings(settings_dict.get("OPTIONS", {})))
    return tuple(sorted({fd for fd in found if fd is not None}))


def _with_login(connection: Any) -> dict[str, Any]:
    """The alias's settings, with the user and password it logs in with now when they
    come from a file or a provider (read once, for the shell; Django's clients pass
    the password in the environment, ``PGPASSWORD`` / ``MYSQL_PWD``)."""
    from multipool.secrets import material_for

    settings_dict = dict(connection.settings_dict)
    material = material_for(connection.multipool_spec())
    if material is None or material.credentials is None:
        return settings_dict
    login = material.credentials.get()
    settings_dict["PASSWORD"] = login.password
    settings_dict["USER"] = login.user or settings_dict.get("USER")
    return settings_dict


class PemShellMixin(BaseDatabaseClient):
    """Django's ``BaseDatabaseClient.runshell``, passing the PEM descriptors on.

    Placed after the vendor's client class in the bases, so that the vendor's
    own ``runshell`` (PostgreSQL ignores SIGINT around it) still runs first.
    """

    def runshell(self, parameters: Iterable[str]) -> None:
        settings_dict = _with_login(self.connection)
        args, env = self.settings_to_cmd_args_env(settings_dict, parameters)
        env = {**os.environ, **env} if env else None
        subprocess.run(args, env=env, check=True, pass_fds=pem_descriptors(settings_dict))
