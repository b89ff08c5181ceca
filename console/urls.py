from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("signup/", views.signup, name="signup"),
    path("switch/", views.switch_tenant, name="switch-tenant"),
    path("keys/", views.api_keys, name="keys"),
    path("keys/<uuid:key_id>/revoke/", views.revoke_api_key, name="revoke-key"),
]
