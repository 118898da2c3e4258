"""The OpenAI-compatible API, mounted at /v1/ (kb.api.openai_compat): paths as OpenAI's, without a trailing slash."""

from django.urls import path

from kb.api import openai_compat

urlpatterns = [
    path("models", openai_compat.models, name="openai_models"),
    # A model id holds a slash (kb/<collection id>), as OpenAI clients send it unescaped.
    path("models/<path:model>", openai_compat.model_detail, name="openai_model"),
    path("chat/completions", openai_compat.chat_completions, name="openai_chat_completions"),
]
