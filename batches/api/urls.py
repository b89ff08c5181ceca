from rest_framework.routers import SimpleRouter

from batches.api.views import BatchViewSet, FileViewSet

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("batches", BatchViewSet, basename="batch")
router.register("files", FileViewSet, basename="file")

urlpatterns = router.urls
