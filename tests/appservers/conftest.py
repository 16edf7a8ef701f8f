"""A database of its own per application-server test, with the test project's table."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.appservers.scenario import create_table


@pytest.fixture
def app_database(server: Any) -> Iterator[str]:
    """A fresh database on ``server`` (each engine) holding the ``Item`` table; dropped
    afterwards. Connections are counted per database, so nothing else is counted."""
    name = f"appserver_{secrets.token_hex(4)}"
    server.create_database(name)
    try:
        create_table(server, name)
        yield name
    finally:
        server.drop_database(name)
