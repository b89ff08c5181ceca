"""Account URLs under ``/accounts/`` that replace or extend ``django.contrib.auth.urls``.

Included before Django's own, so login and password reset go through the throttled views of
console/views.py; the remaining auth URLs (logout, reset done) are Django's.
"""

from django.urls import path

from console import views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("password_reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("reset/<uidb64>/<token>/", views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("reset/done/", views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("verify/resend/", views.resend_verification, name="resend-verification"),
    path("verify/<str:token>/", views.verify_email, name="verify-email"),
    path("keys/revoke/", views.revoke_own_keys, name="revoke-own-keys"),
]
