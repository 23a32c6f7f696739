"""Who is asking: the `Caller` every front end builds and passes down to retrieval and page lookups.

A page's audience (indexer.audience) is a tuple of groups; () = unrestricted.
The rule, in one place (`Caller.may_read`):

- a page with an audience: readable by a caller holding any one of its groups;
- a page with none: readable by every authenticated caller, and by an anonymous
  one only when `[auth] anonymous = "public-only"` (the default, so `make serve`
  works on a laptop with no setup); with "deny" an anonymous caller reads
  nothing (front ends answer 401 before searching);
- an anonymous caller never holds groups, so restricted pages are never its;
- `within`: rights further limited by others' (a Slack channel's): a page is
  readable only when it is readable by this caller AND by each of those, the
  exact intersection of the rights, not of the group sets.

`None` instead of a Caller means "no restriction": local tools and evaluation.
A front end must never pass None for a request from the network.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from indexer.audience import GROUP
from kbgate.errors import BadInput, ConfigError

ANONYMOUS_POLICIES = ("public-only", "deny")


@dataclass(frozen=True)
class Caller:
    """One caller's rights; frozen and hashable (index masks are cached by it)."""
    user: str | None = None  # None = anonymous
    groups: frozenset = field(default_factory=frozenset)
    public: bool = True  # may read pages with no audience
    within: tuple = ()  # Callers whose rights this one's are also limited by

    def __post_init__(self):
        object.__setattr__(self, "groups", frozenset(self.groups))
        object.__setattr__(self, "within", tuple(self.within))

    @property
    def authenticated(self) -> bool:
        """Whether the caller has an identity."""
        return self.user is not None

    def may_read(self, audience) -> bool:
        """Whether this caller may read a page with this audience (see the module docstring)."""
        own = bool(self.groups.intersection(audience)) if audience else self.public
        return own and all(w.may_read(audience) for w in self.within)

    def limited_to(self, other: "Caller") -> "Caller":
        """This caller, reading only what `other` may read too (a reply posted in a Slack channel)."""
        return replace(self, within=self.within + (other,))

    def describe(self) -> str:
        """One line for people: 'alice (groups: hr, oncall)', 'anonymous (public pages only)'."""
        if self.user is None:
            who = "anonymous (public pages only)" if self.public else "anonymous (no access)"
        else:
            who = f"{self.user} (groups: {', '.join(sorted(self.groups)) or 'none'})"
        return who + "".join(f", limited to {w.describe()}" for w in self.within)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (for --json output and logs)."""
        return {"user": self.user, "groups": sorted(self.groups), "public": self.public,
                "within": [w.to_dict() for w in self.within]}


def check_policy(policy: str) -> str:
    """Return `policy` if it is a known `[auth] anonymous` value, else ConfigError naming the key."""
    if policy not in ANONYMOUS_POLICIES:
        raise ConfigError(f"config: [auth] anonymous must be one of {', '.join(map(repr, ANONYMOUS_POLICIES))}, "
                          f"got {policy!r}")
    return policy


def anonymous(policy: str = "public-only") -> Caller:
    """The caller with no identity under an `[auth] anonymous` policy."""
    return Caller(None, frozenset(), public=check_policy(policy) == "public-only")


def parse_groups(value) -> frozenset:
    """Groups from 'hr,oncall' or a list; BadInput naming a bad one (the same names page audiences use)."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    out = set()
    for item in items:
        name = item.strip() if isinstance(item, str) else item
        if name == "":
            continue
        if not isinstance(name, str) or not GROUP.match(name):
            raise BadInput(f"group {item!r} is not a group name (letters, digits, and _ . @ : -)")
        out.add(name)
    return frozenset(out)


def authenticated(user: str, groups=()) -> Caller:
    """A caller with an identity and its groups; BadInput for an empty user name or a bad group."""
    if not isinstance(user, str) or not user.strip():
        raise BadInput("a caller's user name must be a non-empty string")
    return Caller(user.strip(), parse_groups(groups), public=True)


def caller_for(cfg, user: str | None = None, groups=()) -> Caller:
    """The caller a front end has identified: `user` with `groups`, or the anonymous one of cfg's [auth]."""
    if user is None:
        if groups:
            raise BadInput("groups were given without a user; an anonymous caller holds no groups")
        return anonymous(cfg.auth.anonymous)
    return authenticated(user, groups)
