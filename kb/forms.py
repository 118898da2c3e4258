from __future__ import annotations

from django import forms
from django.conf import settings

from ingestion import archives
from kb.models import Feedback, Role, Source


class CollectionForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        # Only "at least one file" here: each file is judged on its own by the upload
        # service, so one empty or oversize file is named and refused and the rest go in.
        files = [f for f in (data if isinstance(data, list | tuple) else [data]) if f]
        if not files and self.required:
            raise forms.ValidationError(self.error_messages["required"], code="required")
        return files


# What the file chooser offers: the formats kb reads, and ZIP archives of them.
UPLOAD_SUFFIXES = sorted(archives.PAGE_SUFFIXES | {".zip"})


class UploadForm(forms.Form):
    files = MultipleFileField(
        label="Files",
        error_messages={"required": "Choose at least one file to upload."},
        widget=MultipleFileInput(attrs={"multiple": True, "accept": ",".join(UPLOAD_SUFFIXES)}),
    )


class AskForm(forms.Form):
    question = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Ask a question about these documents…"}),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["question"].widget.attrs["maxlength"] = settings.KB_MAX_QUESTION_CHARS

    def clean_question(self) -> str:
        # The limit is a setting (KB_MAX_QUESTION_CHARS), read when asked, not when this module loads.
        question = self.cleaned_data["question"]
        if len(question) > settings.KB_MAX_QUESTION_CHARS:
            raise forms.ValidationError(f"Questions are limited to {settings.KB_MAX_QUESTION_CHARS:,} characters.")
        return question


class FeedbackForm(forms.Form):
    rating = forms.TypedChoiceField(choices=Feedback.Rating.choices, coerce=int)
    comment = forms.CharField(
        max_length=2000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "What was right or wrong? (optional)"}),
    )


class CollectionSettingsForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    open_to_all = forms.BooleanField(required=False, label="Open to all signed-in users (as viewers)")
    stale_after_days = forms.IntegerField(
        min_value=1, max_value=36_500, required=False, label="Flag passages unchanged for more than (days)",
        help_text="Beside an answer, a source page not changed at its source for longer is marked "
        "“may be out of date”. Empty: never.",
    )  # fmt: skip


class GrantForm(forms.Form):
    """Add a user or a group (by name) with a role."""

    principal = forms.CharField(max_length=150, label="User or group")
    kind = forms.ChoiceField(choices=[("user", "User"), ("group", "Group")], initial="user")
    role = forms.ChoiceField(choices=Role.choices)

    def clean(self):
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        data = super().clean()
        name = (data.get("principal") or "").strip()
        if not name:
            return data
        if data.get("kind") == "group":
            data["group"] = Group.objects.filter(name=name).first()
            if data["group"] is None:
                self.add_error("principal", f"No group named {name!r}.")
        else:
            data["user"] = get_user_model().objects.filter(username=name, is_active=True).first()
            if data["user"] is None:
                self.add_error("principal", f"No active user named {name!r}.")
        return data


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, label="Token name", help_text="What will use it, e.g. “nightly sync”.")


def _lines(value: str) -> list[str]:
    return [line.strip() for line in (value or "").replace(",", "\n").splitlines() if line.strip()]


class SourceForm(forms.Form):
    """A new source: where it is, what to read of it, how often, and the credentials it needs."""

    kind = forms.ChoiceField(choices=Source.Kind.choices, label="Kind")
    location = forms.CharField(
        max_length=2000, label="Location",
        help_text="A start URL, the wiki's address, a repository URL, or a folder on the server.",
    )  # fmt: skip
    name = forms.CharField(
        max_length=100, required=False, label="Name", help_text="Optional; the first folder of its pages."
    )
    branch = forms.CharField(max_length=200, required=False, label="Branch (Git)")
    include = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, label="Include (globs, one a line)"
    )
    exclude = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, label="Exclude (globs, one a line)"
    )
    every_minutes = forms.IntegerField(  # at most a year: the column is a 32-bit integer
        min_value=1, max_value=525_600, required=False, label="Sync every (minutes)",
        help_text="Empty: only when asked.",
    )  # fmt: skip
    space = forms.CharField(max_length=255, required=False, label="Space key (Confluence)")
    namespaces = forms.CharField(
        max_length=200, required=False, label="Namespaces (MediaWiki)", help_text="Numbers, e.g. 0, 4; empty: 0."
    )
    prefix = forms.CharField(max_length=500, required=False, label="Path prefix (web)", help_text="e.g. /handbook/")
    sitemap = forms.URLField(max_length=2000, required=False, label="Sitemap URL (web)", assume_scheme="https")
    web_url = forms.CharField(
        max_length=2000, required=False, label="Page address template (Git)",
        help_text="e.g. https://git.example/team/wiki/blob/{commit}/{path}",
    )  # fmt: skip
    attachments = forms.BooleanField(required=False, label="Read attachments (Confluence)")
    username = forms.CharField(max_length=200, required=False, label="User name")
    token = forms.CharField(
        max_length=2000, required=False, label="Token or password",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Stored encrypted and never shown again.",
    )  # fmt: skip

    def clean_namespaces(self) -> list[int]:
        try:
            return [int(n) for n in _lines(self.cleaned_data["namespaces"])]
        except ValueError:
            raise forms.ValidationError("Namespaces are numbers, e.g. 0, 4.") from None

    def service_arguments(self) -> dict:
        """The cleaned form as source_add's keyword arguments."""
        d = self.cleaned_data
        return {
            "kind": d["kind"], "location": d["location"], "name": d["name"], "branch": d["branch"],
            "include": _lines(d["include"]), "exclude": _lines(d["exclude"]), "every_minutes": d["every_minutes"],
            "options": {
                "space": d["space"], "namespaces": d["namespaces"], "prefix": d["prefix"], "sitemap": d["sitemap"],
                "web_url": d["web_url"], "attachments": d["attachments"] or None,
            },
            "secret": {"username": d["username"], "token": d["token"]},
        }  # fmt: skip


# --- people (issue 15) ---


class PeopleSearchForm(forms.Form):
    q = forms.CharField(max_length=150, required=False, label="Search people")
    status = forms.ChoiceField(
        choices=[("", "Active and inactive"), ("active", "Active"), ("inactive", "Inactive")],
        required=False, label="Status",
    )  # fmt: skip


class PersonGroupsForm(forms.Form):
    """Group membership; the groups to choose from come from the view (a selector's list)."""

    groups = forms.ModelMultipleChoiceField(
        queryset=None, required=False, widget=forms.CheckboxSelectMultiple, label="Groups"
    )

    def __init__(self, *args, groups, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["groups"].queryset = groups


class PersonInviteForm(PersonGroupsForm):
    username = forms.CharField(max_length=150, label="Username", help_text="What they type to sign in.")
    first_name = forms.CharField(max_length=150, required=False, label="First name")
    last_name = forms.CharField(max_length=150, required=False, label="Last name")
    email = forms.EmailField(required=False, label="E-mail")
    field_order = ["username", "first_name", "last_name", "email", "groups"]


class PrincipalSuggestForm(forms.Form):
    """What the grant form's name box has typed so far, and whether a user or a group is wanted."""

    principal = forms.CharField(max_length=150, required=False)
    kind = forms.ChoiceField(choices=[("user", "User"), ("group", "Group")], required=False)


class ConversationRenameForm(forms.Form):
    title = forms.CharField(max_length=200, label="Title")


class ConversationSearchForm(forms.Form):
    q = forms.CharField(max_length=200, required=False, label="Search conversations")


# --- documents (issue 15) ---


class DocumentFilterForm(forms.Form):
    """The documents list's search, status filter and folder (all optional, from the query string)."""

    q = forms.CharField(
        max_length=200, required=False, label="Search titles and paths",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Search titles and paths"}),
    )  # fmt: skip
    status = forms.ChoiceField(required=False, label="Status")
    folder = forms.CharField(max_length=1000, required=False, widget=forms.HiddenInput)

    def __init__(self, *args, statuses: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["status"].choices = [("", "Any status")] + [(k, label) for k, (label, _) in statuses.items()]


class CollectionDeleteForm(forms.Form):
    """Deleting a collection asks for its name, typed: a click alone cannot do it."""

    confirm_name = forms.CharField(max_length=200, label="Type the collection's name to confirm")

    def __init__(self, *args, name: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name

    def clean_confirm_name(self) -> str:
        typed = self.cleaned_data["confirm_name"].strip()
        if typed != self.name:
            raise forms.ValidationError("That is not the collection's name; nothing was deleted.")
        return typed
