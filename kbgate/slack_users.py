"""Slack identities: which groups a Slack user holds, and what every member of a channel may read.

The file (`[auth] slack_users_file`), one entry a line, `#` comments:

    # user     [TEAM_ID:]USER_ID      [GROUP,GROUP...]
    user       T0001:U2147483697      hr,people-managers
    user       U0ONCALL1              oncall
    # channel  [TEAM_ID:]CHANNEL_ID   [GROUP,...]  groups every member of the channel may read
    channel    C0HRTEAM               hr

An id without a team matches that id in any team; `TEAM:ID` wins over it. A user not
listed is the anonymous caller (`[auth] anonymous`); a listed user with no groups is
signed in (reads the pages with no audience). A channel not listed holds no groups,
so a reply posted there shows only pages with no audience (web.identity.slack_caller
intersects the asker's rights with the channel's). Bad lines: ConfigError naming the line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kbgate.access import Caller, authenticated, parse_groups
from kbgate.errors import BadInput, ConfigError
from kbgate.tokens import WatchedFile

SLACK_ID = re.compile(r"^[A-Z0-9]{2,40}$")  # T…/E… teams, U…/W… users, C…/G…/D… channels
KINDS = ("user", "channel")


@dataclass(frozen=True)
class SlackDirectory:
    """The parsed file: (kind, team or None, id) -> (groups, line)."""
    entries: dict = field(default_factory=dict)

    def groups(self, kind: str, team: str, ident: str):
        """The groups of a user or channel (team-qualified entry first), or None when it is not listed."""
        hit = self.entries.get((kind, team, ident)) or self.entries.get((kind, None, ident))
        return None if hit is None else hit[0]

    def user(self, team: str, user_id: str) -> Caller | None:
        """The signed-in caller of a listed Slack user, or None."""
        groups = self.groups("user", team, user_id)
        return None if groups is None else authenticated(f"slack:{team}:{user_id}", groups)

    def channel(self, team: str, channel_id: str) -> Caller:
        """What every member of the channel may read: its listed groups, and the pages with no audience."""
        return Caller(f"slack-channel:{channel_id}", self.groups("channel", team, channel_id) or frozenset(), public=True)


def _ident(value: str, where: str) -> tuple[str | None, str]:
    team, _, ident = value.rpartition(":")
    for part in filter(None, (team, ident)):
        if not SLACK_ID.match(part):
            raise ConfigError(f"{where}: {part!r} is not a Slack id (uppercase letters and digits, "
                              "such as T0001, U2147483697, C0HRTEAM)")
    if not ident or (team == "" and ":" in value):
        raise ConfigError(f"{where}: {value!r} is not [TEAM_ID:]ID")
    return team or None, ident


def parse_slack_users(text: str, path: str) -> SlackDirectory:
    """The file's entries; ConfigError naming `path` and the line of the first bad one."""
    entries: dict = {}
    for n, line in enumerate(text.splitlines(), 1):
        where = f"slack users file {path} line {n}"
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if fields[0] not in KINDS or not 2 <= len(fields) <= 3:
            raise ConfigError(f"{where}: expected 'user [TEAM_ID:]USER_ID [GROUP,...]' or "
                              f"'channel [TEAM_ID:]CHANNEL_ID [GROUP,...]', got {line.strip()[:80]!r}")
        team, ident = _ident(fields[1], where)
        try:
            groups = parse_groups(fields[2]) if len(fields) == 3 else frozenset()
        except BadInput as e:
            raise ConfigError(f"{where}: {e.message}") from None
        key = (fields[0], team, ident)
        if key in entries:
            raise ConfigError(f"{where}: {fields[0]} {fields[1]} is already on line {entries[key][1]}; keep one")
        entries[key] = (groups, n)
    return SlackDirectory(entries)


class SlackUsersFile(WatchedFile):
    """The file of `[auth] slack_users_file`, read again when it changes."""

    def __init__(self, path: Path):
        super().__init__(path, parse_slack_users, "slack_users_file", SlackDirectory(),
                         "create it (format: README, 'Who may read what') or leave slack_users_file empty")
