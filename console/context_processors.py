from django.conf import settings


def console(request):
    return {
        "gateway_url": settings.GATEWAY_PUBLIC_URL,
        "current_tenant": getattr(request, "tenant", None) or None,
        "current_membership": getattr(request, "membership", None) or None,
    }
