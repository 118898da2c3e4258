"""Reads of a user's own conversations: the sidebar's list and its search."""

from __future__ import annotations

from django.db.models import Exists, OuterRef, Q, QuerySet

from kb.models import Conversation, Message

__all__ = ["SIDEBAR_LIMIT", "conversation_search"]

# How many conversations the sidebar lists (a search lists this many matches too).
SIDEBAR_LIMIT = 20


def conversation_search(*, user, query: str = "") -> QuerySet[Conversation]:
    """The user's conversations whose title or any question contains `query` (all of them when empty), newest first."""
    conversations = Conversation.objects.owned_by(user)
    query = " ".join(query.split())
    if not query:
        return conversations
    asked = Message.objects.filter(conversation=OuterRef("pk"), question__icontains=query)
    return conversations.filter(Q(title__icontains=query) | Q(Exists(asked)))
