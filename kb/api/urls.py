from django.urls import path

from kb.api import views

urlpatterns = [
    path("collections/", views.collections, name="api_collections"),
    path("collections/<int:pk>/documents/", views.documents_upload, name="api_documents_upload"),
    path("documents/<int:pk>/", views.document_detail, name="api_document_detail"),
    path("ask/", views.ask, name="api_ask"),
]
