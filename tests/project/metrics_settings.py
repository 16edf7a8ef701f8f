"""The application-server settings, with the metrics view (``tests.project.metrics_urls``)."""

from tests.project.appserver_settings import *  # noqa: F403

ROOT_URLCONF = "tests.project.metrics_urls"
