"""ASGI application of the test project (uvicorn), see ``appserver_settings``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.appserver_settings")

application = get_asgi_application()
