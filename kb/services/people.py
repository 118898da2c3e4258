"""People: group membership that an identity provider decides (single sign-on), and the
people staff manage inside kb (invite, password links, deactivation, groups)."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from kb import access
from kb.audit import audit_record


@transaction.atomic
def user_groups_sync(*, actor, user, wanted: set[str], managed: set[str]) -> None:
    """Put the user in the `wanted` groups and out of the other `managed` ones; others stay as they are.

    Groups an administrator gave by hand (not in `managed`) are left alone. Each join and
    leave is audited, and the request's access cache forgotten: a group can carry grants.
    """
    for name in wanted:
        Group.objects.get_or_create(name=name)
    current = set(user.groups.filter(name__in=managed).values_list("name", flat=True))
    leave, join = current - wanted, wanted - current
    if leave:
        user.groups.remove(*Group.objects.filter(name__in=leave))
    if join:
        user.groups.add(*Group.objects.filter(name__in=join))
    for action, names in (("group.join", join), ("group.leave", leave)):
        for name in sorted(names):
            audit_record(actor=actor, action=action, target=f"user {user.get_username()}", group=name, via="oidc")
    if leave or join:
        access.forget()


# People managed inside kb by staff (issue 15): invite, reset a password, deactivate, groups.


@dataclass(frozen=True)
class PasswordLink:
    """The parts of a one-time "set your password" link (Django's password-reset URL)."""

    uidb64: str
    token: str


def _require_people_admin(actor, person=None) -> None:
    # Staff administer kb (kb.access); a superuser's password and status are a superuser's
    # business alone, or a staff member could take over a superuser's account.
    if not access.can_use_admin_pages(actor):
        raise PermissionError("Only staff manage people.")
    if person is not None and person.is_superuser and not actor.is_superuser:
        raise PermissionError("Only a superuser can change a superuser's password or status.")
    if person is not None and person.get_username() == access.SYSTEM_USERNAME:
        raise PermissionError("kb's system identity is not a person.")


def _link(person) -> PasswordLink:
    return PasswordLink(
        uidb64=urlsafe_base64_encode(force_bytes(person.pk)), token=default_token_generator.make_token(person)
    )


def _target(person) -> str:
    return f"user {person.get_username()}"


@transaction.atomic
def person_invite(
    *, actor, username: str, email: str = "", first_name: str = "", last_name: str = "", groups=()
) -> tuple[object, PasswordLink]:
    """Create a user with no usable password, in `groups`, and a link to set their password."""
    _require_people_admin(actor)
    User = get_user_model()  # noqa: N806
    username = User.normalize_username(username.strip())
    User.username_validator(username)
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError(f"A user named {username!r} already exists.")
    person = User(username=username, email=User.objects.normalize_email(email.strip()),
                  first_name=first_name.strip(), last_name=last_name.strip())  # fmt: skip
    person.set_unusable_password()
    person.save()
    groups = sorted(groups, key=lambda g: g.name)
    person.groups.set(groups)
    access.forget()
    audit_record(actor=actor, action="person.invite", target=_target(person), groups=[g.name for g in groups])
    return person, _link(person)


@transaction.atomic
def person_password_reset(*, actor, person) -> PasswordLink:
    """Make the person's password unusable (signing them out) and give a fresh set-password link.

    The old password stops working at once and earlier links stop working too: Django's
    reset token depends on the password it replaces.
    """
    _require_people_admin(actor, person)
    if person.pk == actor.pk:
        raise ValidationError("Change your own password from your account page.")
    if not person.is_active:
        raise ValidationError("Reactivate them first: a deactivated person cannot set a password.")
    person.set_unusable_password()
    person.save(update_fields=["password"])
    audit_record(actor=actor, action="person.password_reset", target=_target(person))
    return _link(person)


@transaction.atomic
def person_set_active(*, actor, person, active: bool) -> None:
    """Deactivate (no sign-in, no API tokens, no access) or reactivate a person."""
    _require_people_admin(actor, person)
    if person.pk == actor.pk and not active:
        raise ValidationError("You cannot deactivate yourself.")
    if person.is_active == active:
        return
    person.is_active = active
    person.save(update_fields=["is_active"])
    access.forget()
    audit_record(actor=actor, action="person.activate" if active else "person.deactivate", target=_target(person))


@transaction.atomic
def person_groups_set(*, actor, person, groups) -> None:
    """Put the person in exactly `groups`; each join and leave is audited."""
    _require_people_admin(actor, person)
    wanted = {g.pk: g for g in groups}
    current = {g.pk: g for g in person.groups.all()}
    join = [wanted[pk] for pk in wanted.keys() - current.keys()]
    leave = [current[pk] for pk in current.keys() - wanted.keys()]
    if join:
        person.groups.add(*join)
    if leave:
        person.groups.remove(*leave)
    for action, changed in (("group.join", join), ("group.leave", leave)):
        for group in sorted(changed, key=lambda g: g.name):
            audit_record(actor=actor, action=action, target=_target(person), group=group.name, via="kb")
    if join or leave:
        access.forget()
