"""Settings of the multipool example: every database setting comes from the environment.

Three aliases, all over TLS (see ``deploy/.env.example`` for every variable):

* ``default`` -- PostgreSQL primary, reached through PgBouncer (transaction pooling);
* ``replica1`` -- a streaming replica of it, through the same PgBouncer;
* ``legacy`` -- a MySQL 8 database, reached directly.

Nothing secret is written here: passwords are in the database URLs, which come
from the environment (Docker Compose: ``.env``; Kubernetes: a Secret).
"""

import os

import multipool


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "")
    if not value:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = _env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")

INSTALLED_APPS = [
    "multipool",  # system checks (manage.py check --deploy) and multipool_status
    "notes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Read-your-writes: a request that writes reads from the primary afterwards.
    "multipool.middleware.PinningMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "exampleproject.urls"
WSGI_APPLICATION = "exampleproject.wsgi.application"

# -- databases: everything from the environment ----------------------------------------
DATABASES = multipool.databases()
DATABASE_ROUTERS = ["multipool.routers.PrimaryReplicaRouter"]
# The audit log lives in the legacy MySQL database; everything else in default's group.
MULTIPOOL_ROUTES = {"notes.AuditEntry": "legacy"}
# After a write, this client reads from the primary for 5 s (covers the redirect).
MULTIPOOL_PIN_SECONDS = float(os.environ.get("MULTIPOOL_PIN_SECONDS", "5"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

# -- behind a TLS-terminating proxy or ingress -----------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "0"))
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}
