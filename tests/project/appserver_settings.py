"""Settings of the test project as the application servers run it (gunicorn, uvicorn).

Every database alias comes from the environment through ``multipool.databases()``
(``DATABASE_URL``, ``DATABASE_POOL_SIZE``...). ``APPSERVER_QUERY_AT_LOAD=1`` makes
the WSGI module run a query while the application loads, as a warm-up in a pre-fork
master (gunicorn ``--preload``) would.
"""

import multipool
from tests.project.settings import *  # noqa: F403

DATABASES = multipool.databases()
ROOT_URLCONF = "tests.project.appserver_urls"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django": {"handlers": ["console"], "level": "WARNING"},
        "multipool": {"handlers": ["console"], "level": "WARNING"},
    },
}
