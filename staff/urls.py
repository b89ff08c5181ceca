from django.urls import path

from staff import batches, views

app_name = "staff"

urlpatterns = [
    path("", views.fleet, name="fleet"),
    path("fleet/pool/", views.fleet_pool, name="fleet-pool"),
    path("fleet/workers/", views.fleet_workers, name="fleet-workers"),
    path("fleet/deployments/", views.fleet_deployments, name="fleet-deployments"),
    path("deployments/<uuid:deployment_id>/scale/", views.scale, name="scale"),
    path("deployments/<uuid:deployment_id>/drain/", views.drain_deployment, name="drain-deployment"),
    path("deployments/<uuid:deployment_id>/restart/", views.restart, name="restart"),
    path("workers/<uuid:worker_id>/drain/", views.drain_worker, name="drain-worker"),
    path("tenants/", views.tenants, name="tenants"),
    path("tenants/<uuid:tenant_id>/status/", views.tenant_status, name="tenant-status"),
    path("revenue/", views.revenue, name="revenue"),
    path("traffic/", views.traffic, name="traffic"),
    path("economics/", views.economics, name="economics"),
    path("traffic/data/", views.traffic_data, name="traffic-data"),
    path("batches/", batches.batch_backlog, name="batches"),
    path("queues/", views.queues_page, name="queues"),
    path("queues/data/", views.queues_data, name="queues-data"),
]
