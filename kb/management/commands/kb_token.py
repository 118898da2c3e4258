"""Personal API tokens from the command line: `kb_token create|list|revoke --user U [--name N]`.

`create` prints the new token alone on its last line, for scripts: `TOKEN=$(... | tail -1)`.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kb import selectors
from kb.services.tokens import api_token_create, api_token_revoke


def _user(username: str, *, active: bool):
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"No user named {username!r}.")
    if active and not user.is_active:
        raise CommandError(f"The user {username!r} is deactivated: kb refuses their tokens.")
    return user


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "never"


class Command(BaseCommand):
    help = (
        "Personal API tokens (the OpenAI-compatible API, the JSON API): `kb_token create --user U --name N` "
        "prints a new token alone on its last line; `kb_token list --user U`; `kb_token revoke --user U --name N`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = commands.add_parser("create", help="create a token and print it (shown this once)")
        create.add_argument("--user", required=True, metavar="USERNAME")
        create.add_argument("--name", required=True, help="what will use it, e.g. 'laptop' or 'ci'")
        listing = commands.add_parser("list", help="list a user's tokens (never the tokens themselves)")
        listing.add_argument("--user", required=True, metavar="USERNAME")
        revoke = commands.add_parser("revoke", help="revoke a user's active tokens of that name")
        revoke.add_argument("--user", required=True, metavar="USERNAME")
        revoke.add_argument("--name", required=True)

    def handle(self, *args, action: str, **options):
        return getattr(self, f"_{action}")(**options)

    def _create(self, *, user: str, name: str, **options) -> None:
        owner = _user(user, active=True)
        try:
            token, raw = api_token_create(user=owner, name=name)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(f"Created the token {token.name!r} for {owner.username!r}; it is shown this once:")
        self.stdout.write(raw)

    def _list(self, *, user: str, **options) -> None:
        owner = _user(user, active=False)
        tokens = list(selectors.api_token_list(user=owner))
        if not tokens:
            self.stdout.write(f"{owner.username!r} has no API tokens.")
        for token in tokens:
            state = f"revoked {_when(token.revoked_at)}" if token.revoked_at else "active"
            self.stdout.write(
                f"{token.name}\t{token.prefix}…\tcreated {_when(token.created_at)}\t"
                f"last used {_when(token.last_used_at)}\t{state}"
            )

    def _revoke(self, *, user: str, name: str, **options) -> None:
        owner = _user(user, active=False)
        tokens = [t for t in selectors.api_token_list(user=owner) if t.name == name.strip() and t.is_active]
        if not tokens:
            raise CommandError(f"{owner.username!r} has no active token named {name!r}.")
        for token in tokens:
            api_token_revoke(user=owner, token=token)
        self.stdout.write(f"Revoked {len(tokens)} token{'s' if len(tokens) != 1 else ''} named {name!r}.")
