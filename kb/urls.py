from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from kb.views import ask, pages

urlpatterns = [
    path("", pages.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("collections/new/", pages.collection_create, name="collection_create"),
    path("collections/<int:pk>/", pages.collection_detail, name="collection_detail"),
    path("collections/<int:pk>/upload/", pages.document_upload, name="document_upload"),
    path("collections/<int:pk>/ask/", ask.collection_ask, name="collection_ask"),
    path("batches/<int:pk>/cancel/", pages.batch_cancel, name="batch_cancel"),
    path("documents/<int:pk>/", pages.document_detail, name="document_detail"),
    path("documents/<int:pk>/download/", pages.document_download, name="document_download"),
    path("documents/<int:pk>/delete/", pages.document_delete, name="document_delete"),
    path("passages/<int:pk>/", pages.chunk_detail, name="chunk_detail"),
    path("conversations/<int:pk>/", ask.conversation_detail, name="conversation_detail"),
    path("conversations/<int:pk>/ask/", ask.conversation_ask, name="conversation_ask"),
    path("messages/<int:pk>/stream/", ask.message_stream, name="message_stream"),
    path("admin/", admin.site.urls),
]
