from __future__ import annotations

from django import forms

from kb.models import Feedback, Role


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


class UploadForm(forms.Form):
    files = MultipleFileField(label="Files", error_messages={"required": "Choose at least one file to upload."})


class AskForm(forms.Form):
    question = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Ask a question about these documents…"}),
    )


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
