"""The Django admin for staff. Every change it makes goes through the services, so the admin
leaves the same audit records, stored-file clean-up and access-cache resets as the pages."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from kb import access, selectors
from kb.models import ApiToken, AuditEvent, Collection, CollectionGrant, Conversation, Document, Feedback, Message
from kb.services.collections import (
    collection_create,
    collection_delete,
    collection_grant,
    collection_purge,
    collection_revoke,
    collection_update,
)
from kb.services.documents import document_delete, document_purge
from kb.services.reindex import collection_reindex


class StaffAdmin(admin.ModelAdmin):
    """kb's staff administer every collection (kb.access): no per-model permissions needed."""

    def _staff(self, request) -> bool:
        return access.can_use_admin_pages(request.user)

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


def _save_grant(request, grant: CollectionGrant) -> None:
    """Grant through the service; a grant whose user, group or collection was changed is revoked first."""
    if grant.pk is not None:
        before = CollectionGrant.objects.select_related("collection", "user", "group").filter(pk=grant.pk).first()
        moved = before is not None and (before.collection_id, before.user_id, before.group_id) != (
            grant.collection_id, grant.user_id, grant.group_id,
        )  # fmt: skip
        if moved:
            collection_revoke(actor=request.user, collection=before.collection, user=before.user, group=before.group)
    saved = collection_grant(
        actor=request.user, collection=grant.collection, role=grant.role, user=grant.user, group=grant.group
    )
    grant.pk = saved.pk  # the admin's redirect names the row the service kept


def _revoke_grant(request, grant: CollectionGrant) -> None:
    collection_revoke(actor=request.user, collection=grant.collection, user=grant.user, group=grant.group)


class GrantInline(admin.TabularInline):
    model = CollectionGrant
    extra = 1
    autocomplete_fields = ["user", "group"]

    def has_view_permission(self, request, obj=None) -> bool:
        return access.can_use_admin_pages(request.user)

    has_add_permission = has_change_permission = has_delete_permission = has_view_permission


class CollectionAdminForm(forms.ModelForm):
    def clean_name(self) -> str:
        # The services' rule (unique ignoring case), refused here as a form error.
        name = self.cleaned_data["name"].strip()
        if problem := selectors.collection_name_problem(name=name, exclude_pk=self.instance.pk):
            raise ValidationError(problem)
        return name


@admin.register(Collection)
class CollectionAdmin(StaffAdmin):
    form = CollectionAdminForm
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
        from ingestion.spec import configured_spec

        for collection in queryset:
            try:
                count = collection_reindex(user=request.user, collection=collection)
            except PermissionError as exc:
                self.message_user(request, f"{collection}: {exc}", messages.ERROR)
            except ValidationError as exc:
                self.message_user(request, f"{collection}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(
                    request, f"{collection}: {count} document(s) queued for re-embedding with {configured_spec()}."
                )

    def save_model(self, request, obj, form, change):
        fields = {k: form.cleaned_data[k] for k in ("name", "description", "open_to_all") if k in form.cleaned_data}
        if change:
            collection_update(actor=request.user, collection=obj, **fields)
        else:
            obj.pk = collection_create(user=request.user, **fields).pk

    def delete_model(self, request, obj):
        # The admin's delete is for good: deleted (audited), then purged with its stored files.
        if obj.deleted_at is None:
            collection_delete(actor=request.user, collection=obj)
        collection_purge(actor=request.user, collection=obj)

    def delete_queryset(self, request, queryset):
        for collection in queryset:
            self.delete_model(request, collection)

    def save_formset(self, request, form, formset, change):
        grants = formset.save(commit=False)
        for grant in formset.deleted_objects:
            _revoke_grant(request, grant)
        for grant in grants:
            grant.collection = form.instance
            _save_grant(request, grant)


@admin.register(CollectionGrant)
class CollectionGrantAdmin(StaffAdmin):
    list_display = ["collection", "user", "group", "role", "created_at"]
    list_filter = ["role", "collection"]
    search_fields = ["collection__name", "user__username", "group__name"]
    autocomplete_fields = ["collection", "user", "group"]

    def save_model(self, request, obj, form, change):
        _save_grant(request, obj)

    def delete_model(self, request, obj):
        _revoke_grant(request, obj)

    def delete_queryset(self, request, queryset):
        for grant in queryset.select_related("collection", "user", "group"):
            _revoke_grant(request, grant)


@admin.register(Document)
class DocumentAdmin(StaffAdmin):
    list_display = ["source_path", "collection", "status", "chunk_count", "updated_at"]
    list_filter = ["status", "collection"]
    search_fields = ["source_path", "title"]
    readonly_fields = ["content_hash", "status", "stage", "progress_done", "progress_total", "error", "chunk_count",
                       "batch", "source_archive", "metadata", "attempts"]  # fmt: skip

    def delete_model(self, request, obj):
        # The admin's delete is for good: deleted (audited), then purged with its stored file.
        if obj.deleted_at is None:
            document_delete(user=request.user, document=obj)
        document_purge(user=request.user, document=obj)

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
        return access.can_read_all_conversations(request.user)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(StaffAdmin):
    list_display = ["__str__", "user", "updated_at"]
    inlines = [MessageInline]

    def has_view_permission(self, request, obj=None) -> bool:
        return access.can_read_all_conversations(request.user)

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
