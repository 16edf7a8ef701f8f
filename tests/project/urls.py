from django.urls import path

from tests.project.testapp import views

urlpatterns = [
    path("items/", views.items),
    path("items/add/", views.add_item),
]
