"""Who is asking, for each request: the `Caller` every route passes to the pipeline and the index.

- Bearer tokens (`/api`, `/v1`): a token of `[auth] tokens_file` (hashed there, mapped to
  a user and groups, kbgate.tokens) or of `$KBGATE_API_KEYS` (a signed-in caller with no
  groups). Once either holds a token, `/v1` needs one and `/api` needs one or the SSO
  proxy's identity; a wrong or missing one is 401 with `WWW-Authenticate: Bearer`. Pages
  (`/docs`) take a valid token too, but need none (browsers send none). With no token
  configured, bearer headers are not read at all (as before tokens existed).
- The SSO proxy (the search page, `/docs`, `/api`; oauth2-proxy convention) sets
  `X-Forwarded-User`, `X-Forwarded-Email` and `X-Forwarded-Groups` (comma-separated). They
  are believed only when the request's own peer address (not X-Forwarded-For, which anyone
  can write) is in `[auth] trusted_proxies`. From the proxy they win over an
  `Authorization` header, which oauth2-proxy may fill with its own ID token.
- Slack (`slack_caller`): the user and channel of `[auth] slack_users_file`.
- Anyone else is anonymous: pages with no audience (`[auth] anonymous = "public-only"`),
  or nothing ("deny": routes that show wiki text answer 401 naming what is missing).

Never None: None means "no restriction" to the pipeline, for in-process tools only.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from functools import lru_cache

from flask import current_app, g, request

from indexer.audience import GROUP
from kbgate.access import Caller, anonymous, authenticated
from kbgate.errors import ConfigError, KBGateError, NotReady
from kbgate.slack_users import SlackDirectory, SlackUsersFile
from kbgate.tokens import TokenFile

log = logging.getLogger("kbgate.auth")
USER, EMAIL, GROUPS = "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups"
EXT = "kbgate.identity"


class Unauthenticated(KBGateError):
    """No identity where one is required: `[auth] anonymous = "deny"`, or tokens are configured."""
    status = 401
    code = "unauthenticated"


class TokenRefused(Unauthenticated):
    """A bearer token that is wrong, or missing where tokens are configured."""
    openai_code = "invalid_api_key"  # what OpenAI clients expect under /v1

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class Identities:
    """The token and Slack files of one app, read at start-up (ConfigError naming the line)."""

    def __init__(self, cfg):
        a = cfg.auth
        self.cfg = cfg
        self.tokens = TokenFile(cfg.path(a.tokens_file)) if a.tokens_file else None
        self.slack = SlackUsersFile(cfg.path(a.slack_users_file)) if a.slack_users_file else None

    def api_keys(self) -> list[bytes]:
        """`$KBGATE_API_KEYS` (comma-separated), read per request like the rest of the environment."""
        return [t.strip().encode() for t in os.environ.get(self.cfg.openai.auth_env, "").split(",") if t.strip()]

    def configured(self) -> bool:
        """Whether any bearer token exists, so that bearer auth is on."""
        return self.tokens is not None or bool(self.api_keys())

    def token_caller(self, token: str) -> Caller | None:
        """The caller of a bearer token, or None; 503 while the tokens file is broken (fails closed)."""
        found = None
        if self.tokens is not None:
            try:
                found = self.tokens.lookup(token)
            except ConfigError as e:  # edited badly since the start: the details go to the log, not the client
                log.error("%s", e.message)
                raise NotReady("the server's tokens file is broken; its administrator must fix it (see the log)") from None
        given, ok = token.encode(), False
        for key in self.api_keys():  # every key compared, each in constant time
            ok |= hmac.compare_digest(given, key)
        if found is None and ok:  # a name for logs and the mask cache that does not reveal the key
            found = authenticated("api-key:" + hashlib.sha256(given).hexdigest()[:12])
        return found

    def slack_directory(self) -> SlackDirectory:
        if self.slack is None:
            return SlackDirectory()
        try:
            return self.slack.value()
        except ConfigError as e:
            log.error("%s", e.message)
            raise NotReady("the server's Slack users file is broken; its administrator must fix it") from None


def init_app(app, cfg) -> Identities:
    """Give `app` its Identities once (at blueprint registration, so a bad file stops the start)."""
    if EXT not in app.extensions:
        app.extensions[EXT] = Identities(cfg)
    return app.extensions[EXT]


def identities() -> Identities:
    ext = current_app.extensions
    return ext.get(EXT) or init_app(current_app, ext["kbgate"].cfg)


@lru_cache(maxsize=64)
def networks(items: tuple) -> tuple:
    """The ip_network of each configured address or network (checked when the config loads)."""
    return tuple(ipaddress.ip_network(x, strict=False) for x in items)


def peer_in(addr: str | None, nets: tuple) -> bool:
    """Whether the TCP peer `addr` is in one of `nets` (an IPv4-mapped IPv6 address counts as IPv4:
    ::ffff:127.0.0.1 from a dual-stack socket)."""
    try:
        ip = ipaddress.ip_address((addr or "").split("%", 1)[0])
    except ValueError:
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return any(ip.version == n.version and ip in n for n in nets)


def trusted_peer(cfg, addr: str | None) -> bool:
    """Whether `addr` (the TCP peer) is one of `[auth] trusted_proxies`."""
    return peer_in(addr, networks(tuple(cfg.auth.trusted_proxies)))


def _groups(value: str) -> frozenset:
    """The proxy's groups; names a page audience could never hold ('/hr', 'Domain Users') are dropped."""
    names = {x.strip() for x in value.split(",") if x.strip()}
    bad = sorted(n for n in names if not GROUP.match(n))
    if bad:
        log.info("ignoring SSO groups that are not group names: %s", ", ".join(bad)[:200])
    return frozenset(names.difference(bad))


def sso_caller(cfg) -> Caller | None:
    """The SSO proxy's caller when the headers come from a trusted proxy, else None."""
    user = (request.headers.get(USER) or request.headers.get(EMAIL) or "").strip()
    if user and trusted_peer(cfg, request.remote_addr):
        return authenticated(user, _groups(request.headers.get(GROUPS, "")))
    if user or request.headers.get(GROUPS):
        log.info("ignoring %s/%s from %s: not in [auth] trusted_proxies", USER, GROUPS, request.remote_addr)
    return None


def proxy_caller(cfg) -> Caller:
    """This request's caller: from the SSO headers of a trusted proxy, else anonymous (`[auth] anonymous`)."""
    return sso_caller(cfg) or anonymous(cfg.auth.anonymous)


def _bearer() -> str | None:
    """The token of an `Authorization: Bearer` header ('' for another scheme or an empty one), None without one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _refuse(v1: bool, token: str | None):
    g.kbgate_challenge = True
    if token:
        raise TokenRefused("invalid API key" if v1 else "invalid bearer token: it is none of this server's tokens "
                           "([auth] tokens_file, $KBGATE_API_KEYS)", "invalid_api_key" if v1 else "invalid_token")
    raise TokenRefused("missing API key: send Authorization: Bearer <key>" if v1 else
                       "missing bearer token: send Authorization: Bearer <token> (from [auth] tokens_file or "
                       "$KBGATE_API_KEYS; `kbgate token add` makes one), or come through the SSO proxy",
                       "invalid_api_key" if v1 else "missing_token")


def _resolve(cfg) -> Caller:
    """This request's identity before the "deny" check: see the module docstring for the order."""
    ids, path = identities(), request.path
    v1, api = path == "/v1" or path.startswith("/v1/"), path == "/api" or path.startswith("/api/")
    sso = None if v1 else sso_caller(cfg)
    if sso is not None:
        return sso
    if not ids.configured():
        return anonymous(cfg.auth.anonymous)
    token = _bearer()
    if token:
        found = ids.token_caller(token)
        if found is not None:
            return found
        _refuse(v1, token)
    if v1 or api:  # pages stay open to browsers (which send no token) as the anonymous caller
        _refuse(v1, token)
    return anonymous(cfg.auth.anonymous)


def request_identity(cfg) -> Caller:
    """This request's identity (anonymous allowed), resolved once per request; TokenRefused (401) for a bad token."""
    if "kbgate_identity" not in g:
        g.kbgate_identity = _resolve(cfg)
    return g.kbgate_identity


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
    """The caller of this request, checked against "deny" and cached on flask.g for the request."""
    if "kbgate_caller" not in g:
        g.kbgate_caller = require_reader(request_identity(cfg), why_anonymous(cfg))
    return g.kbgate_caller


def rate_key(cfg) -> str:
    """The rate-limit bucket of this request: its identity (token, SSO or API-key user), else its address."""
    caller = request_identity(cfg)
    return f"user:{caller.user}" if caller.authenticated else f"addr:{request.remote_addr}"


def authenticate():
    """App-wide before_request: resolve /api and /v1 callers up front, so a bad token is 401 on every route."""
    if request.url_rule is None or request.method == "OPTIONS":  # a 404/405, or only the Allow header: no data
        return
    p = request.path
    if p == "/api" or p.startswith(("/api/", "/v1/")) or p == "/v1":
        request_identity(current_app.extensions["kbgate"].cfg)


def challenge(resp):
    """App-wide after_request: a refused bearer token's 401 names the scheme (RFC 6750)."""
    if resp.status_code == 401 and g.get("kbgate_challenge"):
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def slack_caller(form, public: bool) -> Caller:
    """The asker of a Slack request (form: team_id, user_id, channel_id), limited to the channel's
    rights when the reply is posted in the channel; unknown users are anonymous."""
    cfg = identities().cfg
    directory = identities().slack_directory()
    team, user = form.get("team_id", ""), form.get("user_id", "")
    asker = directory.user(team, user) if user else None
    asker = asker or anonymous(cfg.auth.anonymous)
    return asker.limited_to(directory.channel(team, form.get("channel_id", ""))) if public else asker


def slack_rate_key(form, caller: Caller | None) -> str:
    """A Slack asker's rate bucket: the mapped user, else the Slack id (every request comes from Slack's address)."""
    if caller is not None and caller.authenticated:
        return f"user:{caller.user}"
    return f"slack:{form.get('team_id', '')}:{form.get('user_id', '')}"
