"""Outcomes the store owes: the receivers of a delivery finished, but its outcome could not be
written (the disk filled, the connection to PostgreSQL was cut).

The receivers' work stands and the reply says so, so the outcome must not be lost: it is retried
at once, a few times within the request, then kept here and written by a background flush (every
second) as soon as the store takes writes again, and before this process records or claims
anything else, so a redelivery it receives is answered from the written outcome, not run again.
A process that dies owing outcomes leaves those deliveries pending: past the lease they are
*abandoned*, counted, listed and replayed like failed ones (see :mod:`.queries`).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import StoreUnavailable
from . import ingest
from .engine import Database

logger = logging.getLogger("flask_callbot")

#: Seconds to wait before each retry within the request (about 0.75 s in all).
RETRY_DELAYS = (0.05, 0.2, 0.5)
#: Seconds between two background attempts at what is owed.
FLUSH_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """A delivery's outcome as its receivers left it, for the claim (attempt) that ran them."""

    request_id: str
    attempt: int
    finished_at: float
    error: str | None = None


class OwedOutcomes:
    """One per store: outcomes not written yet, oldest first, and the thread that writes them."""

    def __init__(
        self,
        db: Database,
        *,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        self._db = db
        self.retry_delays = tuple(retry_delays)
        self.interval = interval
        self._owed: dict[str, Outcome] = {}
        self._lock = threading.Lock()  # guards _owed and _thread
        self._flushing = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exit_hook = False

    def __len__(self) -> int:
        return len(self._owed)

    def write(self, outcome: Outcome) -> bool:
        """Write ``outcome`` now, retrying briefly; keep it owed if the store still fails.

        ``True`` once written (or superseded by a later claim), ``False`` if it is owed now.
        """
        for delay in (*self.retry_delays, None):
            try:
                self._write(outcome)
            except StoreUnavailable:
                if delay is None:
                    break
                time.sleep(delay)
            else:
                return True
        self._owe(outcome)
        return False

    def flush(self) -> int:
        """Write what is owed, oldest first, stopping at the first failure; how many are left."""
        if not self._owed:
            return 0
        with self._flushing:
            for outcome in list(self._owed.values()):
                try:
                    self._write(outcome)
                except StoreUnavailable:
                    break
                except Exception:  # a bug, not an outage: keep the outcome, say why
                    logger.exception("callbot: could not write the owed outcome")
                    break
                with self._lock:
                    self._owed.pop(outcome.request_id, None)
                logger.warning(
                    "callbot: wrote the owed outcome of request_id=%s (%s)",
                    outcome.request_id,
                    "failed" if outcome.error else "processed",
                )
            return len(self._owed)

    def close(self) -> None:
        """Stop the background flush (what is still owed stays in memory)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _write(self, outcome: Outcome) -> None:
        written = ingest.finish(
            self._db,
            outcome.request_id,
            now=outcome.finished_at,
            attempt=outcome.attempt,
            error=outcome.error,
        )
        if not written:
            logger.warning(
                "callbot: the outcome of request_id=%s attempt %d was not written: a later "
                "attempt holds it",
                outcome.request_id,
                outcome.attempt,
            )

    def _owe(self, outcome: Outcome) -> None:
        logger.error(
            "callbot: could not write the outcome of request_id=%s (%s): kept, written as soon "
            "as the store takes writes again",
            outcome.request_id,
            "failed" if outcome.error else "processed",
        )
        with self._lock:
            self._owed[outcome.request_id] = outcome
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(_flush_at_exit, weakref.ref(self))
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="callbot-owed-outcomes", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
            with self._lock:
                if not self._owed:
                    self._thread = None
                    return
        with self._lock:
            self._thread = None


def _flush_at_exit(ref: weakref.ref[OwedOutcomes]) -> None:
    """A last attempt when the process exits; what is still owed is named in the log (those
    deliveries will show as abandoned once the lease has passed)."""
    owed = ref()
    if owed is None or not owed.flush():
        return
    for outcome in list(owed._owed.values()):
        logger.error(
            "callbot: exiting without writing the outcome of request_id=%s (%s): it will show "
            "as abandoned; replay it (flask callbot replay --failed)",
            outcome.request_id,
            "failed" if outcome.error else "processed",
        )
