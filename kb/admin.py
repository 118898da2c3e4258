from django.contrib import admin

from kb.models import Collection, CollectionGrant, Conversation, Document, Feedback, Message


class GrantInline(admin.TabularInline):
    model = CollectionGrant
    extra = 1
    autocomplete_fields = ["user", "group"]


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at"]
    search_fields = ["name"]
    inlines = [GrantInline]


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["source_path", "collection", "status", "chunk_count", "updated_at"]
    list_filter = ["status", "collection"]
    search_fields = ["source_path", "title"]
    readonly_fields = ["content_hash", "status", "stage", "progress_done", "progress_total", "error", "chunk_count"]


class MessageInline(admin.StackedInline):
    model = Message
    extra = 0
    readonly_fields = [
        "question", "search_query", "answer", "status", "error", "sources", "created_at", "finished_at",
    ]  # fmt: skip
    exclude = ["stop_requested"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "updated_at"]
    inlines = [MessageInline]


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
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
