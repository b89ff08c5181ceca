from django.urls import path

from audit import console as audit_pages
from console import adapters, batches, guardrails, invoices, pages, playground, team, views
from webhooks import console as webhooks_console

app_name = "console"

urlpatterns = [
    path("", pages.overview, name="overview"),
    path("models/", pages.models_page, name="models"),
    path("playground/", playground.playground, name="playground"),
    path("playground/key/", playground.playground_key_view, name="playground-key"),
    path("usage/", pages.usage, name="usage"),
    path("usage.csv", pages.usage_csv, name="usage-csv"),
    path("settings/", pages.settings_page, name="settings"),
    path("signup/", views.signup, name="signup"),
    path("switch/", views.switch_tenant, name="switch-tenant"),
    path("adapters/", adapters.adapters_page, name="adapters"),
    path("adapters/<uuid:adapter_id>/delete/", adapters.delete_adapter, name="delete-adapter"),
    path("batches/", batches.batches_page, name="batches"),
    path("batches/rows/", batches.batch_rows, name="batch-rows"),
    path("batches/<str:batch_id>/cancel/", batches.cancel_batch, name="cancel-batch"),
    path("batches/files/<str:file_id>/", batches.download_file, name="batch-file"),
    path("keys/", views.api_keys, name="keys"),
    path("keys/<uuid:key_id>/revoke/", views.revoke_api_key, name="revoke-key"),
    path("team/", team.team, name="team"),
    path("team/members/<uuid:membership_id>/role/", team.change_role, name="change-role"),
    path("team/members/<uuid:membership_id>/remove/", team.remove_member, name="remove-member"),
    path("team/invitations/<uuid:invitation_id>/revoke/", team.revoke_invitation, name="revoke-invitation"),
    path("invite/<str:token>/", team.accept_invitation, name="accept-invitation"),
    path("audit/", audit_pages.audit_log, name="audit"),
    path("audit.csv", audit_pages.audit_csv, name="audit-csv"),
    path("guardrails/", guardrails.guardrails_page, name="guardrails"),
    path("guardrails/<uuid:policy_id>/", guardrails.guardrail_policy, name="guardrail-policy"),
    path(
        "guardrails/<uuid:policy_id>/delete/",
        guardrails.delete_guardrail_policy,
        name="delete-guardrail-policy",
    ),
    path("webhooks/", webhooks_console.webhooks_page, name="webhooks"),
    path("webhooks/<uuid:endpoint_id>/", webhooks_console.webhook_page, name="webhook"),
    path("webhooks/<uuid:endpoint_id>/test/", webhooks_console.send_test, name="webhook-test"),
    path("webhooks/<uuid:endpoint_id>/rotate/", webhooks_console.rotate_secret, name="webhook-rotate"),
    path("webhooks/<uuid:endpoint_id>/delete/", webhooks_console.delete_webhook, name="webhook-delete"),
    path("billing/", invoices.invoices, name="invoices"),
    path("billing/invoices/<uuid:invoice_id>/", invoices.invoice_detail, name="invoice"),
    path("billing/invoices/<uuid:invoice_id>/pdf/", invoices.invoice_pdf, name="invoice-pdf"),
]
