"""The application-server test project's URLs, and the pools' metrics at ``/metrics``."""

from django.urls import path

import multipool.views
from tests.project.appserver_urls import urlpatterns as served

urlpatterns = [*served, path("metrics", multipool.views.metrics)]
