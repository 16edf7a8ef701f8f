"""WSGI application of the test project (gunicorn), see ``appserver_settings``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.appserver_settings")

application = get_wsgi_application()

if os.environ.get("APPSERVER_QUERY_AT_LOAD") == "1":
    # A warm-up query while the application loads: with gunicorn --preload it runs
    # in the master, whose pool then holds a connection before the workers fork.
    from tests.project.testapp.models import Item

    Item.objects.exists()
