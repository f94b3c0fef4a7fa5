"""The blinker signals flask_callbot sends. The sender is always the Flask app object.

Receivers take keyword arguments and should accept ``**extra`` so new ones can be added. blinker
holds receivers weakly by default: connect a module-level function, or pass ``weak=False``, or a
receiver defined inside a function may be garbage-collected and silently stop receiving.
Receivers must be idempotent: a delivery whose receivers raised is signalled again when it is
redelivered or replayed.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: An authentic, valid callback was recorded. kwargs: ``event``.
callback_received = _signals.signal("callback-received")
#: A request was refused (auth, format, size). kwargs: ``reason`` (str), ``request_id`` (str|None).
callback_rejected = _signals.signal("callback-rejected")
#: A task's status differs from the last applied one (``previous=None`` on first sighting).
#: kwargs: ``event``, ``previous``.
task_status_changed = _signals.signal("task-status-changed")
#: The status changed to PENDING. kwargs: ``event``, ``previous``.
task_pending = _signals.signal("task-pending")
#: The status changed to IN_PROGRESS from anything but PAUSED. kwargs: ``event``, ``previous``.
task_started = _signals.signal("task-started")
#: The status changed to PAUSED. kwargs: ``event``, ``previous``.
task_paused = _signals.signal("task-paused")
#: The status changed from PAUSED to IN_PROGRESS. kwargs: ``event``, ``previous``.
task_resumed = _signals.signal("task-resumed")
#: The status changed to COMPLETED. kwargs: ``event``, ``previous``.
task_completed = _signals.signal("task-completed")
#: The status changed to FAILED (status 4, closed with failure). kwargs: ``event``, ``previous``.
task_failed = _signals.signal("task-failed")
#: Every applied task callback, status changed or not (stale ones excluded). kwargs: ``event``.
task_progress = _signals.signal("task-progress")
#: An order callback (a phone number is finished). kwargs: ``event``.
order_received = _signals.signal("order-received")
#: A call callback (one call attempt finished). kwargs: ``event``.
call_received = _signals.signal("call-received")
