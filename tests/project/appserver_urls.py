from django.urls import path

from tests.project.testapp import appserver_views as views

urlpatterns = [
    path("ping/", views.ping),
    path("pool/", views.pool),
    path("read/", views.read),
    path("write/", views.write),
    path("aread/", views.aread),
    path("awrite/", views.awrite),
]
