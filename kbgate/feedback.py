"""Answer feedback: every answer the pipeline gives, and the 👍/👎 votes on it, in one SQLite file.

The file (`[feedback] path`, default `feedback.sqlite3` in the index folder, beside the
versions, so it outlives them) is in WAL mode: the service's threads, a second worker
process and `kbgate feedback export` read while one of them writes. Each thread has its
own connection (waitress threads); a write is one short transaction.

- `record(...)`: one INSERT per answer (id, time, query, route, label, cited pages, the
  pages it showed, the asker). Past `keep_answers` the oldest answers nobody voted on are
  dropped (every 1,000 answers, in a thread of its own); voted answers are kept for good.
- `vote(...)`: one row per (voter, answer): a second vote replaces the rating (and the
  comment, when one is sent) of the first; "recorded" or "updated" says which.
- `votes()`: the rows the ranking prior (kbgate.prior) and the export read.

Not handled: deleting a caller's votes (do it in SQL), and votes from several services on
different files (point `[feedback] path` at one shared file instead).
"""
from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kbgate.errors import BadInput, KBGateError, NotFound

log = logging.getLogger("kbgate.feedback")

RATINGS = ("up", "down")
MAX_COMMENT = 2000
PRUNE_EVERY = 1000
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,          -- ans_<16 hex>
    created REAL NOT NULL,        -- unix time
    query TEXT NOT NULL,
    route TEXT NOT NULL,          -- answer | troubleshooting | no_answer
    label TEXT NOT NULL,          -- the gate's sentiment label
    pages TEXT NOT NULL,          -- JSON list of the cited page ids (what a vote is about)
    shown TEXT NOT NULL,          -- JSON list of every page id the answer showed (sources, suggestions)
    asker TEXT NOT NULL           -- who asked: user:<name>, anonymous
);
CREATE TABLE IF NOT EXISTS votes (
    answer_id TEXT NOT NULL REFERENCES answers(id),
    voter TEXT NOT NULL,          -- user:<name>, anon:<address>, slack:<team>:<user>
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (answer_id, voter)
);
CREATE INDEX IF NOT EXISTS votes_updated ON votes (updated);
CREATE INDEX IF NOT EXISTS answers_created ON answers (created);
CREATE TABLE IF NOT EXISTS query_vectors (  -- the prior's embeddings of voted queries, per embedder
    embedder TEXT NOT NULL,
    query TEXT NOT NULL,
    vector BLOB NOT NULL,         -- float32, normalized
    PRIMARY KEY (embedder, query)
);
"""


class FeedbackUnavailable(KBGateError):
    """The feedback file cannot be opened or written (its message names the file)."""
    status = 503
    code = "feedback_unavailable"


def new_answer_id() -> str:
    """A random, URL-safe answer id: 'ans_' + 16 hex digits (64 bits)."""
    return "ans_" + secrets.token_hex(8)


@dataclass(frozen=True)
class Vote:
    """One vote joined with its answer, as the prior and the export read it."""
    answer_id: str
    voter: str
    rating: str
    comment: str
    voted_at: float
    query: str
    route: str
    label: str
    pages: tuple
    asked_at: float
    asker: str


def check_vote(rating, comment) -> tuple[str, str | None]:
    """(rating, comment) from a request, or BadInput naming what is wrong."""
    if rating not in RATINGS:
        raise BadInput(f'rating must be "up" or "down", got {json.dumps(rating, ensure_ascii=False)[:40]}')
    if comment is not None:
        if not isinstance(comment, str):
            raise BadInput(f"comment must be a string, got {type(comment).__name__}")
        if len(comment) > MAX_COMMENT:
            raise BadInput(f"comment is longer than {MAX_COMMENT:,} characters ({len(comment):,})")
    return rating, comment


class FeedbackStore:
    """Answers and votes in one SQLite file (WAL); safe to share between threads."""

    def __init__(self, path: str | Path, keep_answers: int = 200_000):
        self.path, self.keep_answers = Path(path), keep_answers
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._recorded = 0
        self.version = 0  # bumped by every vote this process writes (the prior refreshes on it)
        self.conn()  # fail at start, with the path, rather than at the first answer

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened, in WAL mode, with the tables, on first use)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                c = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
                mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                c.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash may lose the last commits, never corrupt
                c.executescript(SCHEMA)
            except (sqlite3.Error, OSError) as e:
                raise FeedbackUnavailable(f"the feedback file {self.path} cannot be opened ({e}); fix or move it, "
                                          "or set [feedback] path (or enabled = false)") from None
            if mode.lower() != "wal":
                log.warning("feedback store %s is in %s mode, not WAL (a network file system?)", self.path, mode)
            self._local.conn = c
            with self._lock:
                self._conns.append(c)
        return c

    def journal_mode(self) -> str:
        return self.conn().execute("PRAGMA journal_mode").fetchone()[0]

    def record(self, answer_id: str, query: str, route: str, label: str, pages, shown, asker: str) -> None:
        """Store one answer (one INSERT); pages: the cited page ids, shown: every page id it showed."""
        c = self.conn()
        c.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (answer_id, time.time(), query, route, label, json.dumps(list(pages), ensure_ascii=False),
                   json.dumps(list(shown), ensure_ascii=False), asker))
        with self._lock:
            self._recorded += 1
            prune = self.keep_answers > 0 and self._recorded % PRUNE_EVERY == 0
        if prune:  # off the request's thread: a scan of up to keep_answers rows
            threading.Thread(target=self._prune_quietly, name="kbgate-feedback-prune", daemon=True).start()

    def _prune_quietly(self) -> None:
        try:
            self.prune()
        except (sqlite3.Error, FeedbackUnavailable) as e:  # tried again 1,000 answers later
            log.warning("pruning old answers in %s failed: %s", self.path, e)

    def prune(self) -> int:
        """Drop the oldest answers without votes beyond `keep_answers` (0: none); return how many went."""
        if self.keep_answers <= 0:
            return 0
        c = self.conn()
        total = c.execute("SELECT count(*) FROM answers").fetchone()[0]
        voted = c.execute("SELECT count(DISTINCT answer_id) FROM votes").fetchone()[0]
        excess = total - voted - self.keep_answers
        if excess <= 0:
            return 0
        # oldest first along the `created` index: the write lock is held for the excess rows only
        cur = c.execute("DELETE FROM answers WHERE rowid IN (SELECT rowid FROM answers WHERE id NOT IN "
                        "(SELECT answer_id FROM votes) ORDER BY created, rowid LIMIT ?)", (excess,))
        return cur.rowcount

    def answer(self, answer_id) -> dict:
        """The stored answer (NotFound when the id is unknown)."""
        row = None
        if isinstance(answer_id, str) and len(answer_id) <= 64:
            row = self.conn().execute("SELECT id, created, query, route, label, pages, shown, asker FROM answers "
                                      "WHERE id = ?", (answer_id,)).fetchone()
        if row is None:
            raise NotFound(f"no answer {str(answer_id)[:64]!r}: answer ids come from /api/search, the page or Slack, "
                           "and old unvoted ones expire")
        keys = ("id", "created", "query", "route", "label", "pages", "shown", "asker")
        out = dict(zip(keys, row))
        out["pages"], out["shown"] = json.loads(out["pages"]), json.loads(out["shown"])
        return out

    def vote(self, answer_id: str, voter: str, rating: str, comment: str | None = None, visible=None) -> str:
        """Store `voter`'s vote; "recorded" for a first vote, "updated" for a second one.

        `visible(answer) -> bool`: whether the voter may see that answer (False: the same
        NotFound as an unknown id). An omitted comment keeps the stored one; "" clears it.
        """
        rating, comment = check_vote(rating, comment)
        answer = self.answer(answer_id)
        if visible is not None and not visible(answer):
            raise NotFound(f"no answer {answer_id!r}: answer ids come from /api/search, the page or Slack, "
                           "and old unvoted ones expire")
        now = time.time()
        c = self.conn()
        try:
            c.execute("BEGIN IMMEDIATE")  # the check and the write as one, also against other processes
            try:
                had = c.execute("SELECT 1 FROM votes WHERE answer_id = ? AND voter = ?", (answer_id, voter)).fetchone()
                c.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (answer_id, voter) DO UPDATE SET "
                          "rating = excluded.rating, comment = CASE WHEN ? THEN excluded.comment ELSE comment END, "
                          "updated = excluded.updated",
                          (answer_id, voter, rating, comment or "", now, now, comment is not None))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:  # locked past the timeout, disk full: the vote is not taken, nothing is lost
            raise FeedbackUnavailable(f"the vote was not stored ({e}); try again") from None
        with self._lock:
            self.version += 1
        return "updated" if had else "recorded"

    def votes(self) -> list[Vote]:
        """Every vote with its answer, oldest first."""
        rows = self.conn().execute(
            "SELECT v.answer_id, v.voter, v.rating, v.comment, v.updated, a.query, a.route, a.label, a.pages, "
            "a.created, a.asker FROM votes v JOIN answers a ON a.id = v.answer_id ORDER BY v.updated, v.rowid")
        return [Vote(*r[:8], tuple(json.loads(r[8])), *r[9:]) for r in rows]

    def vote_rows(self):
        """(voter, rating, query, pages JSON) of every vote: the prior's light read."""
        return self.conn().execute("SELECT v.voter, v.rating, a.query, a.pages FROM votes v "
                                   "JOIN answers a ON a.id = v.answer_id").fetchall()

    def fingerprint(self) -> tuple:
        """(vote count, last vote change): a change means the votes must be read again."""
        return tuple(self.conn().execute("SELECT count(*), max(updated) FROM votes").fetchone())

    def counts(self) -> dict:
        """{"answers", "votes", "up", "down"}."""
        c = self.conn()
        n_answers = c.execute("SELECT count(*) FROM answers").fetchone()[0]
        by = dict(c.execute("SELECT rating, count(*) FROM votes GROUP BY rating").fetchall())
        return {"answers": n_answers, "votes": sum(by.values()), "up": by.get("up", 0), "down": by.get("down", 0)}

    def vectors(self, embedder: str) -> dict[str, bytes]:
        """{query: float32 bytes} stored for `embedder`."""
        return dict(self.conn().execute("SELECT query, vector FROM query_vectors WHERE embedder = ?", (embedder,)))

    def save_vectors(self, embedder: str, items) -> None:
        """Store (query, float32 bytes) pairs for `embedder`."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany("INSERT OR REPLACE INTO query_vectors VALUES (?, ?, ?)", ((embedder, q, v) for q, v in items))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        self._local = threading.local()


def store_path(cfg, index_dir=None) -> Path:
    """The feedback file: `[feedback] path`, else feedback.sqlite3 in the index folder."""
    if cfg.feedback.path:
        return cfg.path(cfg.feedback.path)
    return Path(index_dir or cfg.path(cfg.index.dir)) / "feedback.sqlite3"


def caller_identity(caller) -> str:
    """Who asked, as stored with an answer: 'user:<name>' or 'anonymous' ('local' for in-process tools)."""
    if caller is None:
        return "local"
    return f"user:{caller.user}" if caller.user is not None else "anonymous"


OFF = "feedback is turned off on this server ([feedback] enabled = false)"


class Feedback:
    """One service's store and prior, opened on first use; shared by a pipeline and its hot-reloaded copies."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._store: FeedbackStore | None = None
        self._prior = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cfg.feedback.enabled

    def store(self, index_dir=None) -> FeedbackStore:
        """The store (NotFound when feedback is off, FeedbackUnavailable when its file cannot be opened)."""
        if not self.enabled:
            raise NotFound(OFF)
        with self._lock:
            if self._store is None:
                self._store = FeedbackStore(store_path(self.cfg, index_dir), self.cfg.feedback.keep_answers)
            return self._store

    def prior(self, index_dir=None):
        """The ranking prior (kbgate.prior.VotePrior), or None when feedback or the prior is off."""
        if not self.enabled or self.cfg.feedback.strength <= 0:
            return None
        if self._prior is None:
            from kbgate.prior import VotePrior
            store = self.store(index_dir)
            with self._lock:
                self._prior = self._prior or VotePrior(store, self.cfg.feedback)
        return self._prior
