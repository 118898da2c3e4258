"""Single sign-on: group membership from the identity provider goes through a service and is audited."""

from __future__ import annotations

import pytest

from kb.models import AuditEvent
from kb.oidc import sync_groups
from tests.factories import make_group, make_user

pytestmark = pytest.mark.django_db


def test_joining_and_leaving_mapped_groups_is_audited_as_the_system(settings):
    settings.KB_OIDC_GROUP_MAP = {"idp-hr": "HR", "idp-eng": "Engineering"}
    user = make_user("sso")
    make_group("hand-made", user)
    sync_groups(user, {"groups": ["idp-hr", "idp-eng"]})
    sync_groups(user, {"groups": ["idp-eng"]})
    events = [(e.action, e.detail["group"], e.actor_name) for e in AuditEvent.objects.order_by("pk")]
    assert events == [
        ("group.join", "Engineering", "kb-system"),
        ("group.join", "HR", "kb-system"),
        ("group.leave", "HR", "kb-system"),
    ]
    assert all(e.target == "user sso" for e in AuditEvent.objects.all())


def test_a_sign_in_that_changes_nothing_records_nothing(settings):
    settings.KB_OIDC_GROUP_MAP = {"idp-hr": "HR"}
    user = make_user("sso")
    sync_groups(user, {"groups": ["idp-hr"]})
    before = AuditEvent.objects.count()
    sync_groups(user, {"groups": ["idp-hr"]})
    assert AuditEvent.objects.count() == before
