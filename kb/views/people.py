"""People inside kb: the list and invitations for staff, a person's page (what they can read
and why), name suggestions for the grant form, and the set-your-password link's pages."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from kb import access, selectors
from kb.forms import PeopleSearchForm, PersonGroupsForm, PersonInviteForm, PrincipalSuggestForm
from kb.services import people as people_services

PAGE_SIZE = 50


@require_GET
@login_required
def people(request: HttpRequest) -> HttpResponse:
    form = PeopleSearchForm(request.GET)
    search = form.cleaned_data if form.is_valid() else {}
    found = selectors.people_list(user=request.user, query=search.get("q", ""), status=search.get("status", ""))
    page = Paginator(found, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    template = "kb/people.html" + ("#people-results" if request.htmx else "")
    return TemplateResponse(request, template, {"form": form, "page": page, "query": query.urlencode()})


def _validity() -> str:
    hours = max(1, settings.PASSWORD_RESET_TIMEOUT // 3600)
    return (
        f"{hours // 24} day{'s' if hours >= 48 else ''}"
        if hours % 24 == 0
        else f"{hours} hour{'s' if hours > 1 else ''}"
    )


def _link_page(request: HttpRequest, person, link: people_services.PasswordLink, *, invited: bool) -> HttpResponse:
    url = request.build_absolute_uri(
        reverse("password_reset_confirm", kwargs={"uidb64": link.uidb64, "token": link.token})
    )
    context = {"person": person, "link": url, "invited": invited, "valid_for": _validity()}
    return TemplateResponse(request, "kb/people_link.html", context)


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def person_invite(request: HttpRequest) -> HttpResponse:
    """The invitation form; a valid POST creates the person and shows their link this once."""
    groups = selectors.group_list(user=request.user)
    form = PersonInviteForm(request.POST if request.method == "POST" else None, groups=groups)
    if form.is_valid():
        try:
            person, link = people_services.person_invite(actor=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error("username", exc)
        except PermissionError:
            raise Http404 from None
        else:
            return _link_page(request, person, link, invited=True)
    status = 400 if form.is_bound else 200
    return TemplateResponse(request, "kb/people_new.html", {"form": form}, status=status)


@require_GET
@login_required
def person_detail(request: HttpRequest, pk: int) -> HttpResponse:
    person = selectors.person_get(user=request.user, pk=pk)
    is_staff = access.can_use_admin_pages(request.user)
    context = {
        "person": person,
        "lines": selectors.person_access(user=request.user, person=person),
        "manage": is_staff,
        "groups_form": PersonGroupsForm(
            initial={"groups": list(person.groups.all())}, groups=selectors.group_list(user=request.user)
        )
        if is_staff
        else None,
    }
    return TemplateResponse(request, "kb/people_detail.html", context)


def _act(request: HttpRequest, pk: int, action) -> HttpResponse:
    """Run a staff action on a person; refusals come back as a message on their page."""
    person = selectors.person_get(user=request.user, pk=pk, staff_only=True)
    try:
        result = action(person)
    except (ValidationError, PermissionError) as exc:
        messages.error(request, " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc))
        return redirect("person_detail", pk=person.pk)
    return result


@never_cache
@require_POST
@login_required
def person_password_reset(request: HttpRequest, pk: int) -> HttpResponse:
    def reset(person):
        link = people_services.person_password_reset(actor=request.user, person=person)
        return _link_page(request, person, link, invited=False)

    return _act(request, pk, reset)


def _set_active(request: HttpRequest, pk: int, *, active: bool) -> HttpResponse:
    def change(person):
        people_services.person_set_active(actor=request.user, person=person, active=active)
        name = person.get_username()
        if active:
            messages.info(request, f"Reactivated {name}.")
        else:
            messages.info(request, f"Deactivated {name}: they cannot sign in or use their API tokens.")
        return redirect("person_detail", pk=person.pk)

    return _act(request, pk, change)


@require_POST
@login_required
def person_deactivate(request: HttpRequest, pk: int) -> HttpResponse:
    return _set_active(request, pk, active=False)


@require_POST
@login_required
def person_reactivate(request: HttpRequest, pk: int) -> HttpResponse:
    return _set_active(request, pk, active=True)


@require_POST
@login_required
def person_groups(request: HttpRequest, pk: int) -> HttpResponse:
    form = PersonGroupsForm(request.POST, groups=selectors.group_list(user=request.user))

    def set_groups(person):
        if not form.is_valid():
            raise ValidationError(form.errors["groups"])
        people_services.person_groups_set(actor=request.user, person=person, groups=form.cleaned_data["groups"])
        messages.info(request, f"Saved {person.get_username()}'s groups.")
        return redirect("person_detail", pk=person.pk)

    return _act(request, pk, set_groups)


@require_GET
@login_required
def principal_suggest(request: HttpRequest) -> HttpResponse:
    """The grant form's suggestions: a <datalist> of up to ten names (staff and owners only)."""
    form = PrincipalSuggestForm(request.GET)
    typed = form.cleaned_data if form.is_valid() else {}
    suggestions = selectors.principal_suggestions(
        user=request.user, query=typed.get("principal", ""), kind=typed.get("kind") or "user"
    )
    return TemplateResponse(request, "kb/collection_access.html#principal-options", {"suggestions": suggestions})


class SetPasswordView(auth_views.PasswordResetConfirmView):
    """Django's set-password-from-a-link page, refusing the links of deactivated people."""

    def get_user(self, uidb64):
        user = super().get_user(uidb64)
        return user if user is not None and user.is_active else None
