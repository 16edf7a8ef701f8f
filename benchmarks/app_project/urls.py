from django.urls import path

from benchmarks.app_project import views

urlpatterns = [
    path("sync/", views.sync_read),
    path("async/", views.async_read),
    path("pool/", views.pool),
]
