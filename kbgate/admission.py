"""Admission in front of the engine: a few slots, a bounded FIFO queue, a deadline, refusals at once.

`Admission.enter(kind, cancelled)` returns a `Ticket` (a context manager) once the
request holds a slot, or raises `Busy` (503 with Retry-After) straight away when the
queue is full or the expected wait plus the expected work of this kind would pass
the deadline. A queued request gives up its place when its client is gone
(`cancelled()` is polled while it waits) or when it can no longer finish in time.
Expected work per kind ("search", "sentiment", "chat") is a moving average of the
measured durations, so the estimate follows the machine it runs on.

`RateLimit` is the other refusal: a caller over its rate of requests per minute gets
`RateLimited` (429, Retry-After) before it reaches the queue.

Not handled: fairness between callers within the queue (one FIFO for everyone), several
processes (each holds its own queue and its own counts).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

from kbgate import metrics
from kbgate.errors import Busy, KBGateError

POLL_S = 0.1  # how often a waiting request checks whether its client is still there
CUT_MARGIN = 0.15  # share of the deadline kept for what follows the cut: the other slot's prefill, checks, sending
FIRST_GUESS_S = {"search": 10.0, "chat": 10.0, "sentiment": 0.5}  # until a kind has been measured


class Cancelled(KBGateError):
    """The client went away; its work stopped and its slot was freed (nobody reads this)."""
    status = 499
    code = "client_closed_request"


class RateLimited(KBGateError):
    """One caller started more requests than `[server] rate_per_minute` allows."""
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimit:
    """A token bucket per caller: `per_minute` requests a minute, as a burst or spread out; 0 = no limit."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_callers: int = 10000):
        self.per_minute, self.clock, self.max_callers = per_minute, clock, max_callers
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when counted)
        self._lock = threading.Lock()

    def check(self, caller: str) -> None:
        """Count one request of `caller`, or raise RateLimited with the seconds until it may ask again."""
        if self.per_minute <= 0:
            return
        rate, now = self.per_minute / 60.0, self.clock()
        with self._lock:
            if len(self._buckets) > self.max_callers:  # forget the ones that are full again
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] + (now - v[1]) * rate < self.per_minute}
            tokens, then = self._buckets.get(caller, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                metrics.rejected("rate_limit")
                raise RateLimited(f"more than {self.per_minute} requests a minute from this caller; slow down",
                                  max(1, math.ceil((1.0 - tokens) / rate)))
            self._buckets[caller] = (tokens - 1.0, now)


class Ticket:
    """A held slot: leaving the `with` block (or `release()`) frees it and records the duration."""

    def __init__(self, owner: "Admission", kind: str, arrived: float):
        self.owner, self.kind, self.start, self._done = owner, kind, owner.clock(), False
        # the reply is cut a margin before the deadline: between two of this request's decode steps another
        # request's prefill can hold the engine for seconds (bench/load.py: answers ended up to 6.5 s past 60 s)
        self.deadline_at = arrived + owner.deadline_s * (1.0 - CUT_MARGIN)
        self.record = True  # False for work cut short (a client gone): its duration says nothing

    def overdue(self) -> bool:
        """Whether the request's deadline (from its arrival, less CUT_MARGIN) has passed: answer with what there is."""
        return self.owner.clock() >= self.deadline_at

    def release(self) -> None:
        if not self._done:
            self._done = True
            self.owner._leave(self)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Admission:
    """`slots` requests on the engine at once, at most `queue` waiting, each within `deadline_s`."""

    def __init__(self, slots: int, queue: int, deadline_s: float, clock: Callable[[], float] = time.monotonic):
        self.slots, self.queue, self.deadline_s, self.clock = max(0, slots), max(0, queue), deadline_s, clock
        self._cond = threading.Condition()
        self._running: list[Ticket] = []
        self._waiting: deque = deque()  # (kind, entered) of the queued requests, oldest first
        self._mean: dict[str, float] = dict(FIRST_GUESS_S)
        self._measured: set[str] = set()  # kinds whose mean is measured, not FIRST_GUESS_S
        self.refused = 0  # for tests and /readyz

    # ---- estimates ------------------------------------------------------------------
    def expected(self, kind: str) -> float:
        """Seconds a request of `kind` has taken lately."""
        return self._mean.get(kind, FIRST_GUESS_S["search"])

    def expected_wait(self) -> float:
        """Seconds until a request arriving now would get a slot (call with the lock held)."""
        if len(self._running) < self.slots and not self._waiting:
            return 0.0
        now = self.clock()
        left = sum(max(0.0, self.expected(t.kind) - (now - t.start)) for t in self._running)
        left += sum(self.expected(kind) for kind, _ in self._waiting)
        return left / max(1, self.slots)

    def status(self) -> dict:
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting), "slots": self.slots,
                    "queue": self.queue, "expected_wait_s": round(self.expected_wait(), 2), "refused": self.refused}

    # ---- entering and leaving ---------------------------------------------------------
    def _refuse(self, why: str, wait: float, reason: str) -> Busy:
        self.refused += 1
        metrics.rejected(reason)  # queue_full, deadline or queue_timeout
        return Busy(f"{why}; retry shortly", retry_after=max(1, math.ceil(wait)))

    def enter(self, kind: str, cancelled: Callable[[], bool] | None = None) -> Ticket:
        """A slot for one request of `kind`, or Busy at once; Cancelled if the client leaves while queued."""
        arrived = self.clock()
        with self._cond:
            free = len(self._running) < self.slots and not self._waiting
            if not free and len(self._waiting) >= self.queue:
                raise self._refuse(f"{self.slots + self.queue} requests are already being answered or queued",
                                   self.expected_wait() or self.expected(kind), "queue_full")
            wait, work = self.expected_wait(), self.expected(kind)
            if wait + work > self.deadline_s and not free:
                raise self._refuse(f"the expected wait ({wait:.0f} s) and answer ({work:.0f} s) exceed the "
                                   f"{self.deadline_s:g} s deadline", wait, "deadline")
            if free:
                return self._take(kind, arrived)
            me = (kind, arrived)
            self._waiting.append(me)
            metrics.admission_changed(self)
            give_up_at = me[1] + max(0.0, self.deadline_s - work)
            try:
                while not (self._waiting[0] is me and len(self._running) < self.slots):
                    if cancelled is not None and cancelled():
                        raise Cancelled("the client went away while queued")
                    left = give_up_at - self.clock()
                    if left <= 0:
                        raise self._refuse("the queue did not move fast enough to answer within the deadline",
                                           self.expected_wait(), "queue_timeout")
                    self._cond.wait(min(POLL_S, left))
            except BaseException:
                self._waiting.remove(me)
                metrics.admission_changed(self)
                self._cond.notify_all()  # the next one in line may now be at the head
                raise
            self._waiting.popleft()
            return self._take(kind, arrived)

    def _take(self, kind: str, arrived: float) -> Ticket:
        t = Ticket(self, kind, arrived)
        self._running.append(t)
        metrics.admission_changed(self)  # multi-process mode only: a live gauge per worker
        return t

    def _leave(self, t: Ticket) -> None:
        took = self.clock() - t.start
        with self._cond:
            self._running.remove(t)
            metrics.admission_changed(self)
            if t.record:
                self._mean[t.kind] = 0.7 * self._mean[t.kind] + 0.3 * took if t.kind in self._measured else took
                self._measured.add(t.kind)
            self._cond.notify_all()
