"""ASGI entry point: ``uvicorn benchmarks.app_project.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.app_project.settings")
application = get_asgi_application()
