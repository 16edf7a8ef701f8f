"""A tripwire on the parts of Django that the pooled backends rely on without calling.

Between two requests a pooled wrapper keeps its connection (``Hold.KEPT``) and
the next ``ensure_connection()`` goes on with it without Django's
``connect()``; ``dbshell`` runs through a copy of ``BaseDatabaseClient.runshell``
that passes the in-memory PEM files on; ``close_if_unusable_or_obsolete()``
decides when keeping is safe from the same state Django's own version reads;
``close()`` is relied on to return early when the wrapper holds no connection.
That is correct for the Django versions whose code is recorded here. When a supported Django changes
one of these methods, this test fails: read the change, check
``multipool/backends/pooled.py`` (or ``client.py``) against it, and record the new
version's hash.
"""

from __future__ import annotations

import ast
import hashlib
import inspect

import django
from django.db.backends.base import base, client

#: method -> the hashes of its code (ast, without docstring and comments), per Django
#: version it was seen in
KNOWN: dict[str, dict[str, str]] = {
    "connect": {"fb03a42117b0100a": "4.2, 5.2, 6.1"},
    "ensure_connection": {"6329949ee8548f41": "4.2", "d32f4cc3be05d784": "5.2, 6.1"},
    "close": {"aab25f60b931336b": "4.2, 5.2, 6.1"},
    "close_if_unusable_or_obsolete": {"d9a87c29e2034895": "4.2, 5.2, 6.1"},
}
#: BaseDatabaseClient.runshell, copied by multipool/backends/client.py
RUNSHELL = {"471e0d4300334c91": "4.2, 5.2, 6.1"}


def code_hash(function: ast.FunctionDef) -> str:
    body = function.body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        body = body[1:]  # the docstring
    return hashlib.sha256("\n".join(ast.dump(node) for node in body).encode()).hexdigest()[:16]


def method_hashes(module: object, class_name: str, names: set[str]) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    cls = next(
        node for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name == class_name
    )
    return {
        node.name: code_hash(node)
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and node.name in names
    }


def test_the_django_methods_the_pooled_backends_mirror_are_unchanged() -> None:
    found = method_hashes(base, "BaseDatabaseWrapper", set(KNOWN))
    assert set(found) == set(KNOWN)
    changed = {name: h for name, h in found.items() if h not in KNOWN[name]}
    assert not changed, (
        f"Django {django.get_version()} changed BaseDatabaseWrapper.{', '.join(changed)}: "
        "review multipool/backends/pooled.py (the kept connection between requests "
        f"skips connect()), then record {changed} in KNOWN"
    )


def test_the_runshell_the_shell_client_copies_is_unchanged() -> None:
    found = method_hashes(client, "BaseDatabaseClient", {"runshell"})["runshell"]
    assert found in RUNSHELL, (
        f"Django {django.get_version()} changed BaseDatabaseClient.runshell: bring "
        f"multipool/backends/client.py in line, then record {found!r} in RUNSHELL"
    )
