"""ASGI application of the test project (uvicorn), see ``appserver_settings``."""

import os

from django.core.asgi import get_asgi_application

from multipool.asgi import close_pools_at_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.appserver_settings")

application = close_pools_at_shutdown(get_asgi_application())
