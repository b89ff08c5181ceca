from rest_framework.routers import SimpleRouter

from models_registry.api.views import ModelViewSet

router = SimpleRouter(trailing_slash="/?")
router.register("models", ModelViewSet, basename="model")

urlpatterns = router.urls
