"""Who is acting: identities the bot verified itself, never ones a person declares.

Two kinds exist. A Slack identity is ``slack:<user id>``, read from a request whose signature the
Slack layer checked. A command-line identity is ``cli:<OS account>``: the account the process runs
as, or the account behind ``sudo`` (``SUDO_USER``, trusted only when running as root, who could
write the state file anyway). ``--as NAME`` only adds a display name; it never changes the identity,
so one shell cannot pose as two people to satisfy a two-person rule. What counts as one person
everywhere (quorum, requester, audit) is :attr:`Actor.key`, kind plus id, never the display name.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from bot.errors import IdentityError

ActorKind = Literal["cli", "slack"]

_ID = re.compile(r"[\w.@$-]+")
"""OS account names (``alice``, ``svc.redis``, ``ci$``) and Slack user ids (``U012AB3CD``): no colon,
comma or space, so a key can never be read as two identities or as another kind."""
_DISPLAY = re.compile(r"\w[\w .'-]{0,63}")
"""Letters (any script), digits, spaces, ``. ' -``: no ``:``, ``,``, ``<``, ``@`` or backticks, so a
display name cannot look like another identity (``slack:UBOB``), a Slack mention or a list."""


class Actor(BaseModel):
    """A verified identity, plus an optional display name that is only ever shown next to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ActorKind
    id: str
    display: str | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _ID.fullmatch(v):
            raise ValueError(f"{v!r} is not an account name or user id (letters, digits, . _ - @ $)")
        return v

    @field_validator("display")
    @classmethod
    def _check_display(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = " ".join(v.split())
        if not _DISPLAY.fullmatch(v):
            raise ValueError(
                f"display name {v!r} may hold letters, digits, spaces and . ' - (at most 64 characters,"
                " starting with a letter or digit)"
            )
        return v

    @property
    def key(self) -> str:
        """The identity: what quorum, the requester rule and cli_approvers compare."""
        return f"{self.kind}:{self.id}"

    @property
    def label(self) -> str:
        """How the actor is shown and audited: ``cli:alice (as "Alice Smith")``."""
        return f'{self.key} (as "{self.display}")' if self.display else self.key

    def __str__(self) -> str:
        return self.label


def os_account(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The OS account a command runs for: the process's, or the sudo caller's when running as root.

    ``SUDO_USER`` is honoured only for uid 0: any other user could set it to claim someone else.
    An account missing from the password database is named by its numeric uid.
    """
    uid = os.getuid() if uid is None else uid
    env = os.environ if environ is None else environ
    if uid == 0:
        sudo_user = env.get("SUDO_USER", "").strip()
        if sudo_user and sudo_user != "root":
            return sudo_user
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _actor(kind: ActorKind, id_: str, display: str | None) -> Actor:
    try:
        return Actor(kind=kind, id=id_, display=display)
    except ValidationError as exc:
        reasons = "; ".join(
            str(e["msg"]).removeprefix("Value error, ") for e in exc.errors(include_url=False)
        )
        raise IdentityError(reasons) from None


def cli_actor(
    display: str | None = None, *, uid: int | None = None, environ: Mapping[str, str] | None = None
) -> Actor:
    """The person at this terminal: ``cli:<OS account>``, with ``display`` (``--as``) shown beside it.

    Raises :class:`IdentityError` for a display name that could be mistaken for another identity.
    """
    return _actor("cli", os_account(uid, environ), display)


def slack_actor(user_id: str) -> Actor:
    """A Slack user, from the user id of a request whose signature was verified."""
    return _actor("slack", user_id, None)
