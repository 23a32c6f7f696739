"""Who is asking, for each request: the `Caller` every route passes to the pipeline and the index.

- The search page and /api: the company's SSO proxy (oauth2-proxy convention) sets
  `X-Forwarded-User`, `X-Forwarded-Email` and `X-Forwarded-Groups` (comma-separated)
  after signing the user in. They are believed only when the request's own peer address
  (not X-Forwarded-For, which anyone can write) is in `[auth] trusted_proxies`; from any
  other address they are ignored and the caller is anonymous.
- /v1: the bearer key (web.openai_api); Slack: anonymous (no user-to-group mapping yet).
- An anonymous caller reads only pages with no audience (`[auth] anonymous =
  "public-only"`), or nothing: with "deny", routes that show wiki text answer 401 naming
  what is missing.

Never None: None means "no restriction" to the pipeline, for in-process tools only.
"""
from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache

from flask import g, request

from indexer.audience import GROUP
from kbgate.access import Caller, anonymous, authenticated
from kbgate.errors import KBGateError

log = logging.getLogger("kbgate.auth")
USER, EMAIL, GROUPS = "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups"


class Unauthenticated(KBGateError):
    """No identity where `[auth] anonymous = "deny"` requires one."""
    status = 401
    code = "unauthenticated"


@lru_cache(maxsize=64)
def _networks(proxies: tuple) -> tuple:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)  # checked by AuthConfig


def trusted_peer(cfg, addr: str | None) -> bool:
    """Whether `addr` (the TCP peer) is one of `[auth] trusted_proxies`."""
    try:
        ip = ipaddress.ip_address((addr or "").split("%", 1)[0])
    except ValueError:
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 from a dual-stack socket
    return any(ip in net for net in _networks(tuple(cfg.auth.trusted_proxies)))


def _groups(value: str) -> frozenset:
    """The proxy's groups; names a page audience could never hold ('/hr', 'Domain Users') are dropped."""
    names = {x.strip() for x in value.split(",") if x.strip()}
    bad = sorted(n for n in names if not GROUP.match(n))
    if bad:
        log.info("ignoring SSO groups that are not group names: %s", ", ".join(bad)[:200])
    return frozenset(names.difference(bad))


def proxy_caller(cfg) -> Caller:
    """This request's caller: from the SSO headers of a trusted proxy, else anonymous (`[auth] anonymous`)."""
    user = (request.headers.get(USER) or request.headers.get(EMAIL) or "").strip()
    if user and trusted_peer(cfg, request.remote_addr):
        return authenticated(user, _groups(request.headers.get(GROUPS, "")))
    if user or request.headers.get(GROUPS):
        log.info("ignoring %s/%s from %s: not in [auth] trusted_proxies", USER, GROUPS, request.remote_addr)
    return anonymous(cfg.auth.anonymous)


def why_anonymous(cfg) -> str:
    """What is missing for this request to have an identity, for the 401 message."""
    sent = [h for h in (USER, EMAIL, GROUPS) if request.headers.get(h)]
    if sent and not trusted_peer(cfg, request.remote_addr):
        return (f"{'/'.join(sent)} came from {request.remote_addr}, which is not in [auth] trusted_proxies, "
                "so it was ignored; reach this server through the SSO proxy")
    return f"no {USER} (or {EMAIL}) header from the SSO proxy; sign in through it"


def require_reader(caller: Caller, missing: str) -> Caller:
    """`caller`, or Unauthenticated (401) for an anonymous caller that may read nothing ("deny")."""
    if not caller.authenticated and not caller.public:
        raise Unauthenticated(f'this server does not answer anonymous callers ([auth] anonymous = "deny"): {missing}')
    return caller


def request_caller(cfg) -> Caller:
    """The SSO caller of this request, checked against "deny" and cached on flask.g for the request."""
    if "kbgate_caller" not in g:
        g.kbgate_caller = require_reader(proxy_caller(cfg), why_anonymous(cfg))
    return g.kbgate_caller
