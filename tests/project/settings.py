"""Settings of the small Django project the test suite drives as a user would.

Every database alias comes from the environment through ``multipool.databases()``.
"""

import multipool

SECRET_KEY = "multipool-test-project"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "multipool",
    "tests.project.testapp",
]
DATABASES = multipool.databases()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.project.urls"
MIDDLEWARE: list[str] = []
