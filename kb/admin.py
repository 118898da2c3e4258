from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from kb import services
from kb.models import ApiToken, AuditEvent, Collection, CollectionGrant, Conversation, Document, Feedback, Message


class StaffAdmin(admin.ModelAdmin):
    """kb's staff administer every collection (kb.access): no per-model permissions needed."""

    def _staff(self, request) -> bool:
        return bool(request.user.is_active and (request.user.is_staff or request.user.is_superuser))

    def has_module_permission(self, request) -> bool:
        return self._staff(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return self._staff(request)

    def has_add_permission(self, request) -> bool:
        return self._staff(request)

    def has_change_permission(self, request, obj=None) -> bool:
        return self._staff(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._staff(request)


def _audit_grant(request, grant: CollectionGrant, action: str) -> None:
    principal = f"user {grant.user.get_username()}" if grant.user_id else f"group {grant.group.name}"
    services.audit_record(
        actor=request.user, action=action, collection=grant.collection, target=principal, role=grant.role, via="admin"
    )


class GrantInline(admin.TabularInline):
    model = CollectionGrant
    extra = 1
    autocomplete_fields = ["user", "group"]

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

    has_add_permission = has_change_permission = has_delete_permission = has_view_permission


@admin.register(Collection)
class CollectionAdmin(StaffAdmin):
    list_display = ["name", "open_to_all", "embedding_model", "created_by", "created_at"]
    list_filter = ["open_to_all"]
    search_fields = ["name"]
    readonly_fields = ["embedding_model"]
    inlines = [GrantInline]
    actions = ["reindex"]

    @admin.display(description="Embedding model")
    def embedding_model(self, obj: Collection) -> str:
        if obj.reindex_spec is None:
            return str(obj.embed_spec)
        return f"{obj.embed_spec} (re-indexing to {obj.reindex_spec})"

    @admin.action(description="Re-embed every document with the configured model (of any size)")
    def reindex(self, request, queryset):
        from ingestion.embeddings import configured_spec

        for collection in queryset:
            try:
                count = services.collection_reindex(user=request.user, collection=collection)
            except PermissionError as exc:
                self.message_user(request, f"{collection}: {exc}", messages.ERROR)
            except ValidationError as exc:
                self.message_user(request, f"{collection}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(
                    request, f"{collection}: {count} document(s) queued for re-embedding with {configured_spec()}."
                )

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        for grant in formset.new_objects + [g for g, _ in formset.changed_objects]:
            _audit_grant(request, grant, "access.grant")
        for grant in formset.deleted_objects:
            _audit_grant(request, grant, "access.revoke")


@admin.register(CollectionGrant)
class CollectionGrantAdmin(StaffAdmin):
    list_display = ["collection", "user", "group", "role", "created_at"]
    list_filter = ["role", "collection"]
    search_fields = ["collection__name", "user__username", "group__name"]
    autocomplete_fields = ["collection", "user", "group"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        _audit_grant(request, obj, "access.grant")

    def delete_model(self, request, obj):
        _audit_grant(request, obj, "access.revoke")
        super().delete_model(request, obj)


@admin.register(Document)
class DocumentAdmin(StaffAdmin):
    list_display = ["source_path", "collection", "status", "chunk_count", "updated_at"]
    list_filter = ["status", "collection"]
    search_fields = ["source_path", "title"]
    readonly_fields = ["content_hash", "status", "stage", "progress_done", "progress_total", "error", "chunk_count",
                       "batch", "source_archive", "metadata", "attempts"]  # fmt: skip

    def delete_model(self, request, obj):
        from kb import services

        services.document_delete(user=request.user, document=obj)  # the stored file goes too

    def delete_queryset(self, request, queryset):
        for document in queryset:
            self.delete_model(request, document)


class MessageInline(admin.StackedInline):
    model = Message
    extra = 0
    can_delete = False
    readonly_fields = [
        "question", "search_query", "answer", "status", "error", "sources", "created_at", "finished_at",
    ]  # fmt: skip
    exclude = ["stop_requested"]

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(StaffAdmin):
    list_display = ["__str__", "user", "updated_at"]
    inlines = [MessageInline]

    def has_view_permission(self, request, obj=None) -> bool:
        # Conversations are private; only superusers read them here.
        return request.user.is_active and request.user.is_superuser

    has_module_permission = has_change_permission = has_delete_permission = has_view_permission


@admin.register(Feedback)
class FeedbackAdmin(StaffAdmin):
    """Readers' judgements of answers, for admins tuning the prompt, the model or the documents."""

    list_display = ["created_at", "rating", "user", "short_question", "comment"]
    list_filter = ["rating", "created_at"]
    search_fields = ["question", "answer", "comment", "user__username"]
    readonly_fields = ["message", "user", "rating", "comment", "question", "answer", "created_at"]

    @admin.display(description="Question")
    def short_question(self, obj: Feedback) -> str:
        return obj.question[:80]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(StaffAdmin):
    """Staff can see and revoke tokens, never read or create one: only the digest is stored."""

    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    readonly_fields = ["user", "name", "prefix", "digest", "created_at", "last_used_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(StaffAdmin):
    """Read-only: the log is written by the services and never edited."""

    list_display = ["created_at", "actor_name", "action", "collection_name", "target"]
    list_filter = ["action"]
    search_fields = ["actor_name", "collection_name", "target"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
