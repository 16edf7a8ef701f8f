"""Settings of the application-server benchmark's project.

``MPBENCH_CONFIG`` names the configuration (see
:data:`benchmarks.app_project.configs.APP_CONFIGS`); ``DATABASE_URL``,
``DATABASE_POOL_SIZE`` and ``DATABASE_MAX_OVERFLOW`` say where and how big.
"""

import os

from benchmarks.app_project.configs import CONFIG_VARIABLE, database_entry
from benchmarks.common import database_name

MPBENCH_CONFIG = os.environ[CONFIG_VARIABLE]
if "," in MPBENCH_CONFIG:
    # Several configurations in one process (benchmarks.app_paired): each an alias
    # of its own, on its own database; "default" is the first.
    DATABASES = {config: database_entry(config, name=database_name(config))
                 for config in MPBENCH_CONFIG.split(",")}
    DATABASES["default"] = DATABASES[MPBENCH_CONFIG.split(",")[0]]
else:
    DATABASES = {"default": database_entry(MPBENCH_CONFIG)}

SECRET_KEY = "multipool-app-benchmark"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["benchmarks.app_project"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "benchmarks.app_project.urls"
WSGI_APPLICATION = "benchmarks.app_project.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# A request that fails logs its traceback to the server's output, where the
# benchmark picks up the exception's last line for its report.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
