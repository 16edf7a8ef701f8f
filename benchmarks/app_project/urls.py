from django.urls import path

from benchmarks.app_project import views

urlpatterns = [
    path("sync/", views.sync_read),
    path("async/", views.async_read),
    path("pool/", views.pool),
    # one alias of several configurations served by one process (benchmarks.app_paired)
    path("<str:alias>/sync/", views.sync_read),
    path("<str:alias>/async/", views.async_read),
]
