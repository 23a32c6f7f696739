"""Bearer tokens for /api and /v1: a file of hashed tokens, each mapped to a user and groups.

The file (`[auth] tokens_file`) holds one token a line, never the token itself:

    # sha256:<hex of the token's SHA-256>  USER  [GROUP,GROUP...]
    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  hana  hr,people-managers
    sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752  ci-bot

Blank lines and `#` comments are skipped. A token is 32 random bytes (`secrets`), so
a plain SHA-256 is enough to store it: there is nothing to guess a dictionary from.
`kbgate token add USER --groups g1,g2` writes a line and prints the token once.
Any bad line is a ConfigError naming the file and the line, at start-up; the file is
read again when it changes, and a bad edit then refuses every token (fails closed).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from kbgate.access import Caller, authenticated, parse_groups
from kbgate.errors import BadInput, ConfigError

PREFIX = "kbg_"  # tells a leaked kbgate token apart in logs and secret scanners
DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}$")


@dataclass(frozen=True)
class Token:
    """One line of the tokens file: the token's digest and the caller it stands for."""
    digest: bytes
    caller: Caller
    line: int


def digest(token: str) -> str:
    """The file's form of a token: 'sha256:<hex>'."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def check_user(user: str) -> str:
    """`user` if it can stand in a tokens file line, else BadInput saying what may."""
    if not isinstance(user, str) or not USER.match(user):
        raise BadInput(f"user {user!r} is not a user name for the tokens file (letters, digits and _ . @ : + -, "
                       "no spaces, at most 128 characters)")
    return user


def parse_line(text: str, where: str) -> Token | None:
    """One line's Token (None for a blank line or a comment); ConfigError prefixed by `where`."""
    fields = text.split("#", 1)[0].split()
    if not fields:
        return None
    if not 2 <= len(fields) <= 3:
        raise ConfigError(f"{where}: expected 'sha256:<64 hex digits> USER [GROUP,GROUP...]', "
                          f"got {len(fields)} field(s)")
    m = DIGEST.match(fields[0])
    if not m:
        # the field is not echoed: it may be a plain token someone pasted in
        plain = "" if fields[0].startswith("sha256:") else (
            "; tokens are stored hashed, never in plain text: remove this line and run "
            "`kbgate token add USER --groups ...`, which prints a new token once")
        raise ConfigError(f"{where}: the first field is not 'sha256:' and 64 lowercase hex digits{plain}")
    try:
        caller = authenticated(check_user(fields[1]), parse_groups(fields[2]) if len(fields) == 3 else ())
    except BadInput as e:
        raise ConfigError(f"{where}: {e.message}") from None
    return Token(bytes.fromhex(m.group(1)), caller, 0)


def parse_tokens(text: str, path: str) -> tuple[Token, ...]:
    """Every token of a tokens file's text; ConfigError naming `path` and the line of the first bad one."""
    out, seen = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        tok = parse_line(line, f"tokens file {path} line {n}")
        if tok is None:
            continue
        if tok.digest in seen:
            raise ConfigError(f"tokens file {path} line {n}: the same token as line {seen[tok.digest]}; remove one")
        seen[tok.digest] = n
        out.append(Token(tok.digest, tok.caller, n))
    return tuple(out)


class WatchedFile:
    """A config file parsed at start-up and again whenever it changes on disk; fails closed while bad."""

    def __init__(self, path: Path, parse, key: str, empty, hint: str):
        self.path, self.parse, self.key, self.empty, self.hint = Path(path), parse, key, empty, hint
        self._lock = threading.Lock()
        self._stamp, self._value = None, empty
        self.value()  # a missing or bad file stops the start

    def _read(self):
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"[auth] {self.key} {self.path} does not exist; {self.hint}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"[auth] {self.key} {self.path} cannot be read: {e}") from None
        self._value = self.parse(text, str(self.path))
        self._stamp = stamp

    def value(self):
        """The parsed file as it is now; ConfigError while it is bad (nothing from an older version is kept)."""
        with self._lock:
            try:
                self._read()
            except ConfigError:
                self._stamp, self._value = None, self.empty  # a broken edit must not leave revoked entries working
                raise
            return self._value


class TokenFile(WatchedFile):
    """The tokens file of `[auth] tokens_file`."""

    def __init__(self, path: Path):
        super().__init__(path, parse_tokens, "tokens_file", (),
                         "create it with `kbgate token add USER --groups ...` or leave tokens_file empty")

    def lookup(self, token: str) -> Caller | None:
        """The caller of `token`, or None; every stored digest is compared, each in constant time."""
        given = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for t in self.value():
            if hmac.compare_digest(given, t.digest):
                found = t.caller
        return found


def add_token(path: Path, user: str, groups=()) -> str:
    """Append a new token for `user` with `groups` to the tokens file (created 0600) and return the token."""
    check_user(user)
    names = sorted(parse_groups(groups))
    path = Path(path)
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    parse_tokens(existing, str(path))  # never append to a file the server would refuse
    token = new_token()
    line = f"{digest(token)}  {user}" + (f"  {','.join(names)}" if names else "") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if existing and not existing.endswith("\n"):
            f.write("\n")
        if not existing:
            f.write("# kbgate bearer tokens: sha256:<hex> USER [GROUP,...]  (kbgate token add)\n")
        f.write(line)
    return token
