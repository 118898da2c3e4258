from django.contrib import admin

from kb.models import ApiToken, AuditEvent, Collection, CollectionGrant, Conversation, Document, Message


class GrantInline(admin.TabularInline):
    model = CollectionGrant
    extra = 1
    autocomplete_fields = ["user", "group"]


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "open_to_all", "created_by", "created_at"]
    list_filter = ["open_to_all"]
    search_fields = ["name"]
    inlines = [GrantInline]


@admin.register(CollectionGrant)
class CollectionGrantAdmin(admin.ModelAdmin):
    list_display = ["collection", "user", "group", "role", "created_at"]
    list_filter = ["role", "collection"]
    search_fields = ["collection__name", "user__username", "group__name"]
    autocomplete_fields = ["collection", "user", "group"]


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["source_path", "collection", "status", "chunk_count", "updated_at"]
    list_filter = ["status", "collection"]
    search_fields = ["source_path", "title"]
    readonly_fields = ["content_hash", "status", "stage", "progress_done", "progress_total", "error", "chunk_count"]


class MessageInline(admin.StackedInline):
    model = Message
    extra = 0
    readonly_fields = ["question", "answer", "status", "error", "sources", "created_at", "finished_at"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "updated_at"]
    inlines = [MessageInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Staff can see and revoke tokens, never read or create one: only the digest is stored."""

    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    readonly_fields = ["user", "name", "prefix", "digest", "created_at", "last_used_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
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
