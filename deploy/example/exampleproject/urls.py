from django.urls import path
from notes import views

urlpatterns = [
    path("", views.index),
    path("notes/", views.notes),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
]
