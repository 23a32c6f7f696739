"""The feedback ranking prior: 👍/👎 on answers nudge the pages they cited, for similar queries only.

For a query q and a candidate page p (already among the retrievers' fused candidates,
so already allowed for the caller), take every vote on an answer that cited p whose
query's embedding has cosine ≥ `similarity` with q's. Each voter counts once per page,
by the sign of their own votes' sum (50 votes from one caller are one voter). With
`net` = voters up − voters down:

    multiplier(p) = 1 + strength   if net ≥  min_callers
                    1 − strength   if net ≤ −min_callers
                    1              otherwise

The retriever multiplies the fused score of p's sections by it (kbgate.retrieval), and
only for sections close enough to the top k to change it, so the prior never adds a
page, never reaches past the fused candidates, and swaps two pages only when their
fused scores are within a factor (1 + strength) / (1 − strength) of each other.

Cost: votes are grouped by page with the vectors of that page's distinct voted queries,
`(n_queries_on_p, dim) float32`, loaded in a background thread (after a vote in this
process, else every `refresh_s` when the store's vote count or last change moved), so a
search never waits for SQLite or an embedder; per search it is one small matrix-vector
product per page near the top. Voted queries are embedded once per embedder and the
vectors kept in the store (`query_vectors`): only a first load after an embedder change
embeds many (with a progress bar), and meanwhile searches rank without votes.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

log = logging.getLogger("kbgate.feedback")
EMBED_BATCH = 64


@dataclass(frozen=True)
class Block:
    """The votes on one page: (q, dim) vectors of its distinct voted queries; per vote (n,) its query's
    row there, its voter id and its sign (+1 / -1)."""
    vectors: np.ndarray
    rows: np.ndarray
    voters: np.ndarray
    signs: np.ndarray
    n_voters: int  # distinct voters on the page, whatever the query: fewer than min_callers skips the page


@dataclass(frozen=True)
class Snapshot:
    embedder: str
    blocks: dict = field(default_factory=dict)  # page id -> Block
    version: int = -1  # the store's vote counter when read
    loaded_at: float = 0.0
    votes: int = 0
    fingerprint: tuple = ()  # the store's (count, last change) when read: unchanged = nothing to reload


class VotePrior:
    """Multipliers in [1 - strength, 1 + strength] per candidate page, from the votes in a FeedbackStore."""

    def __init__(self, store, cfg, clock=time.monotonic):
        self.store, self.cfg, self.clock = store, cfg, clock
        self.strength = float(cfg.strength)
        self._snap: Snapshot | None = None
        self._lock = threading.Lock()
        self._loading = False
        self._vectors: dict[str, dict] = {}  # embedder name -> {query: (dim,) float32}, kept across loads

    def threshold(self, embedder_name: str) -> float:
        """The cosine from which two queries count as similar, for this embedder."""
        return float(self.cfg.similarity.get(embedder_name, self.cfg.similarity_default))

    def multipliers(self, embedder, qvecs: dict, pages) -> dict[str, float]:
        """{page: multiplier} for those of `pages` the votes move; qvecs: {embedder name: (dim,) query vector}."""
        snap = self.current(embedder)
        qv = qvecs.get(snap.embedder) if snap is not None else None
        if qv is None or not snap.blocks:
            return {}
        tau, need, a = self.threshold(snap.embedder), self.cfg.min_callers, self.strength
        out = {}
        for page in pages:
            b = snap.blocks.get(page)
            if b is None or b.n_voters < need:
                continue
            near = ((b.vectors @ qv) >= tau)[b.rows]  # (n,) votes whose query is similar to this one
            if np.count_nonzero(near) < need:
                continue
            _, who = np.unique(b.voters[near], return_inverse=True)
            own = np.bincount(who, weights=b.signs[near])  # each voter's net vote on this page
            net = int(np.count_nonzero(own > 0)) - int(np.count_nonzero(own < 0))
            if abs(net) >= need:
                out[page] = 1.0 + a if net > 0 else 1.0 - a
        return out

    def current(self, embedder) -> Snapshot | None:
        """The loaded votes for this embedder (None until first loaded); starts a background reload when stale."""
        snap = self._snap
        stale = (snap is None or snap.embedder != embedder.name or snap.version != self.store.version
                 or self.clock() - snap.loaded_at > self.cfg.refresh_s)
        if stale:
            with self._lock:
                start, self._loading = not self._loading, True
            if start:
                threading.Thread(target=self._load_quietly, args=(embedder,), name="kbgate-feedback-prior",
                                 daemon=True).start()
        return snap if snap is not None and snap.embedder == embedder.name else None

    def _load_quietly(self, embedder) -> None:
        try:
            self.refresh(embedder)
        except Exception:  # the prior is an extra: searches go on with the old votes (or none)
            log.exception("loading the feedback votes failed; ranking goes on without the newest ones")
        finally:
            with self._lock:
                self._loading = False

    def refresh(self, embedder) -> Snapshot:
        """Read every vote now (embedding voted queries not embedded yet) and use them from the next search.

        When no vote changed since the last load (the store's count and last change), only the time is renewed.
        """
        version = self.store.version  # read first: a vote landing meanwhile makes the next search reload
        fingerprint = self.store.fingerprint()
        old = self._snap
        if old is not None and old.embedder == embedder.name and old.fingerprint == fingerprint:
            return self._keep(replace(old, version=version, loaded_at=self.clock()))
        voter_ids: dict[str, int] = {}
        parsed: dict[str, tuple] = {}
        acc: dict[str, tuple] = {}  # page -> ({query: its row}, rows, voters, signs)
        n = 0
        for voter, rating, query, pages_json in self.store.vote_rows():
            pages = parsed.get(pages_json)
            if pages is None:  # answers citing the same pages share the string: parse it once
                pages = parsed[pages_json] = tuple(dict.fromkeys(json.loads(pages_json)))
            if not pages:
                continue
            n += 1
            vid = voter_ids.setdefault(voter, len(voter_ids))
            sign = 1.0 if rating == "up" else -1.0
            for page in pages:
                queries, rows, voters, signs = acc.get(page) or acc.setdefault(page, ({}, [], [], []))
                rows.append(queries.setdefault(query, len(queries)))
                voters.append(vid)
                signs.append(sign)
        vecs = self.vectors(embedder, {q for queries, *_ in acc.values() for q in queries})
        blocks = {page: Block(np.stack([vecs[q] for q in queries]), np.array(rows, np.int32),
                              np.array(voters, np.int32), np.array(signs, np.float32), len(set(voters)))
                  for page, (queries, rows, voters, signs) in acc.items()}
        return self._keep(Snapshot(embedder.name, blocks, version, self.clock(), n, fingerprint))

    def _keep(self, snap: Snapshot) -> Snapshot:
        with self._lock:  # a load that read the votes earlier never replaces one that read them later
            old = self._snap
            if old is None or old.embedder != snap.embedder or old.version <= snap.version:
                self._snap = snap
        return snap

    def vectors(self, embedder, queries: set) -> dict:
        """{query: (dim,) float32} for `queries`: kept, else stored in the file, else embedded now (and stored)."""
        from indexer.embedders import embed_queries

        have = self._vectors.setdefault(embedder.name, {})
        if queries - have.keys():
            for q, b in self.store.vectors(embedder.name).items():
                v = np.frombuffer(b, np.float32)
                if v.shape == (embedder.dim,):  # another model under the same name: embedded again
                    have[q] = v
        missing = sorted(queries - have.keys())
        if missing:
            bar = _progress(len(missing), f"embedding {len(missing):,} voted queries with {embedder.name}")
            for i in range(0, len(missing), EMBED_BATCH):
                part = missing[i:i + EMBED_BATCH]
                got = np.asarray(embed_queries(embedder, part), np.float32)
                self.store.save_vectors(embedder.name, [(q, v.tobytes()) for q, v in zip(part, got)])
                have.update(zip(part, got))
                bar.update(len(part))
            bar.close()
        return have


class _Silent:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str):
    """A tqdm bar on stderr for long loads (a first start with many votes), else nothing."""
    if total < 256:
        return _Silent()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="query")
