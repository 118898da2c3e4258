from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from kb.models import Collection, CollectionGrant, Conversation, Document, Message


class GrantInline(admin.TabularInline):
    model = CollectionGrant
    extra = 1
    autocomplete_fields = ["user", "group"]


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at"]
    search_fields = ["name"]
    inlines = [GrantInline]
    actions = ["reindex"]

    @admin.action(description="Re-embed every document (e.g. after changing the embedding model)")
    def reindex(self, request, queryset):
        from kb import services

        for collection in queryset:
            try:
                count = services.collection_reindex(user=request.user, collection=collection)
            except (PermissionError, ValidationError) as exc:
                self.message_user(request, f"{collection}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{collection}: {count} document(s) queued for re-embedding.")


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
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
    readonly_fields = ["question", "answer", "status", "error", "sources", "created_at", "finished_at"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "updated_at"]
    inlines = [MessageInline]
