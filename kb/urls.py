from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from kb.views import account, ask, collections, pages, people, sources, status

handler500 = "kb.views.errors.server_error"
handler400 = "kb.limits.bad_request"  # too many files in one upload, said in words

urlpatterns = [
    path("", pages.home, name="home"),
    path(
        "login/", auth_views.LoginView.as_view(extra_context={"oidc_enabled": settings.KB_OIDC_ENABLED}), name="login"
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("ask/", ask.ask, name="ask"),
    path("collections/new/", pages.collection_create, name="collection_create"),
    path("collections/<int:pk>/", pages.collection_detail, name="collection_detail"),
    path("collections/<int:pk>/upload/", pages.document_upload, name="document_upload"),
    path("collections/<int:pk>/ask/", ask.collection_ask, name="collection_ask"),
    path("collections/<int:pk>/sources/new/", sources.source_create, name="source_create"),
    path("sources/<int:pk>/", sources.source_detail, name="source_detail"),
    path("sources/<int:pk>/sync/", sources.source_sync, name="source_sync"),
    path("sources/<int:pk>/remove/", sources.source_remove, name="source_remove"),
    path("batches/<int:pk>/cancel/", pages.batch_cancel, name="batch_cancel"),
    path("documents/<int:pk>/", pages.document_detail, name="document_detail"),
    path("documents/<int:pk>/download/", pages.document_download, name="document_download"),
    path("documents/<int:pk>/delete/", pages.document_delete, name="document_delete"),
    path("documents/<int:pk>/restore/", pages.document_restore, name="document_restore"),
    path("passages/<int:pk>/", pages.chunk_detail, name="chunk_detail"),
    path("conversations/<int:pk>/", ask.conversation_detail, name="conversation_detail"),
    path("conversations/<int:pk>/ask/", ask.conversation_ask, name="conversation_ask"),
    path("conversations/", ask.conversation_search, name="conversation_search"),
    path("conversations/<int:pk>/rename/", ask.conversation_rename, name="conversation_rename"),
    path("conversations/<int:pk>/delete/", ask.conversation_delete, name="conversation_delete"),
    path("messages/<int:pk>/stream/", ask.message_stream, name="message_stream"),
    path("messages/<int:pk>/stop/", ask.message_stop, name="message_stop"),
    path("messages/<int:pk>/regenerate/", ask.message_regenerate, name="message_regenerate"),
    path("messages/<int:pk>/feedback/", ask.message_feedback, name="message_feedback"),
    path("admin/", admin.site.urls),
    # Access administration, account and the JSON API (issue 4)
    path("collections/<int:pk>/access/", collections.collection_access, name="collection_access"),
    path("collections/<int:pk>/settings/", collections.collection_settings, name="collection_settings"),
    path("collections/<int:pk>/delete/", collections.collection_delete, name="collection_delete"),
    path("collections/<int:pk>/restore/", collections.collection_restore, name="collection_restore"),
    path("collections/<int:pk>/grants/", collections.grant_add, name="grant_add"),
    path("collections/<int:pk>/grants/<int:grant_pk>/delete/", collections.grant_remove, name="grant_remove"),
    path("audit/", collections.audit_log, name="audit_log"),
    path("account/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("account/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("account/tokens/", account.api_tokens, name="api_tokens"),
    path("account/tokens/<int:pk>/revoke/", account.api_token_revoke, name="api_token_revoke"),
    # People managed inside kb (issue 15)
    path("people/", people.people, name="people"),
    path("people/new/", people.person_invite, name="person_invite"),
    path("people/suggest/", people.principal_suggest, name="principal_suggest"),
    path("people/<int:pk>/", people.person_detail, name="person_detail"),
    path("people/<int:pk>/password/", people.person_password_reset, name="person_password_reset"),
    path("people/<int:pk>/deactivate/", people.person_deactivate, name="person_deactivate"),
    path("people/<int:pk>/reactivate/", people.person_reactivate, name="person_reactivate"),
    path("people/<int:pk>/groups/", people.person_groups, name="person_groups"),
    path("reset/<uidb64>/<token>/", people.SetPasswordView.as_view(), name="password_reset_confirm"),
    path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("api/v1/", include("kb.api.urls")),
    path("v1/", include("kb.api.openai_urls")),  # OpenAI-compatible (issue 16)
    path("status/model/", status.model_status, name="model_status"),
]

if settings.KB_OIDC_ENABLED:
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))
