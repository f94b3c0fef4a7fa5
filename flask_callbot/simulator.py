"""A vendor simulator: a realistic campaign of signed callbacks, with faults, against a live URL.

:func:`build_campaign` plans one: a task going pending → in progress → paused → resumed →
completed, hundreds of orders whose call attempts interleave over a few phone lines, and task
statistics that add up to the orders and calls created before each task callback. On request it
adds duplicates, reordering, forged signatures and clock skew. :func:`run_campaign` posts it over
HTTP (stdlib only) from a small thread pool and compares every answer with what a correct
receiver answers. ``flask callbot simulate`` is the command-line face of both.

Time: every delivery has ``at``, the second (after the campaign's start) the vendor created it.
The runner stamps ``createTs`` when it sends, placing the campaign in the last ``span`` seconds,
so a slow run (``delay``) stays inside the receiver's window, while a delivery sent late still
carries its older creation time (which is what makes a reordered task update stale).

The vendor does not document ``callStatus`` values; the simulator uses 1 for an answered call and
2 for one that was not.
"""

from __future__ import annotations

import json
import queue
import random
import secrets
import time
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any

from flask import Flask

from .events import CallbackKind, TaskStatus
from .routes import callback_url
from .state import get_state
from .store import StoreReader
from .tables import render_table
from .testing import call_payload, order_payload, task_payload
from .vendor_api import FakeVendor, Faults, VendorBook, serve_vendor_api
from .wire import HttpReply, post_callback, serialize, sign_headers

if TYPE_CHECKING:
    from .reconcile import Report

#: Intents a call script recognises: (tag, name as the script writes it, level).
_INTENTS = (
    ("interested", "有意向", 1),
    ("callback", "要求回电", 2),
    ("price", "询问价格", 3),
    ("busy", "在忙", 3),
    ("not_interested", "无意向", 4),
    ("wrong_number", "打错了", 5),
)
_NAMES = ("王小明", "李娜", "张伟", "刘洋", "陈静", "杨帆", "赵磊", "")
_NOT_ANSWERED = (("NO_ANSWER", "480"), ("USER_BUSY", "486"), ("CALL_REJECTED", "603"))
_ANSWERED, _NOT_ANSWERED_STATUS = 1, 2
_MARGIN = 2  # seconds either side of a window edge where either answer is right
_DUPLICATE_LAG = (1, 15)  # a duplicate arrives this many deliveries after its original
_REORDER_LAG = (2, 12)


class Role(StrEnum):
    """What a delivery is, which decides the answer a correct receiver gives."""

    GENUINE = "genuine"  # signed correctly, sent once
    DUPLICATE = "duplicate"  # a genuine delivery sent again, same bytes and headers
    FORGED = "forged"  # a wrong key, or a body changed after signing


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One POST of the campaign."""

    #: The vendor's creation order of the genuine delivery this is (or copies).
    created: int
    kind: CallbackKind
    request_id: str
    payload: dict[str, Any] = field(repr=False, compare=False)
    #: Exactly the bytes posted.
    body: bytes = field(repr=False)
    #: When the vendor created it: seconds after the campaign's start.
    at: int
    role: Role = Role.GENUINE
    #: For a forgery: ``"wrong-key"`` or ``"tampered-body"``.
    forgery: str | None = None
    #: Sent with the skewed clock.
    skewed: bool = False
    #: Delivered later than created, by the reordering.
    reordered: bool = False
    #: Sent by the vendor but lost on the way: never posted (reconciliation recovers it).
    lost: bool = False
    label: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Campaign:
    """A planned campaign: its deliveries in sending order, and what they add up to."""

    run_id: str
    task_id: str
    user_task_id: str
    orders: int
    calls: int
    #: Seconds from the first creation to the last.
    span: int
    #: Seconds added to ``createTs`` of the skewed deliveries.
    skew: int
    deliveries: tuple[Delivery, ...]

    @property
    def genuine(self) -> list[Delivery]:
        """The genuine deliveries in the vendor's creation order."""
        return sorted(
            (d for d in self.deliveries if d.role is Role.GENUINE), key=lambda d: d.created
        )

    def count(self, role: Role) -> int:
        return sum(1 for d in self.deliveries if d.role is role)


def _rate(part: int, whole: int) -> float:
    """The vendor's rates: a fraction rounded to 2 decimals, 0 when nothing to divide by."""
    return round(part / whole, 2) if whole else 0


@dataclass
class _Plan:
    """The campaign as the vendor lives it, in creation order, before times and bodies."""

    rng: random.Random
    orders: int
    events: list[tuple[CallbackKind, dict[str, Any], str]] = field(default_factory=list)
    finished: int = 0
    answered_orders: int = 0
    calls: int = 0
    answered_calls: int = 0

    def task(self, status: TaskStatus, label: str) -> None:
        stat = {
            "answerOrderCount": self.answered_orders,
            "finishOrderCount": self.finished,
            "totalOrderCount": self.orders,
            "finishRate": _rate(self.finished, self.orders),
            "totalAnswerCall": self.answered_calls,
            "totalCall": self.calls,
            "answerRate": _rate(self.answered_calls, self.calls),
        }
        self.events.append(
            (CallbackKind.TASK, {"taskStatus": int(status), "taskStat": stat}, label)
        )

    def call(self, order: dict[str, Any], last_chance: bool) -> bool:
        """One call attempt of ``order``; whether the order is finished by it."""
        rng = self.rng
        self.calls += 1
        answered = rng.random() < 0.6
        self.answered_calls += answered
        order["attempts"] += 1
        call: dict[str, Any] = {"answered": answered, "number": self.calls}
        if answered:
            call["intents"] = rng.sample(range(len(_INTENTS)), rng.randint(1, 3))
            call["talk"] = rng.randint(20, 240)
            call["agent"] = rng.random() < 0.25
        else:
            call["hangup"] = rng.randrange(len(_NOT_ANSWERED))
        finished = answered or last_chance
        order["last_call"] = call
        label = f"call {order['attempts']} of {order['id']}"
        self.events.append((CallbackKind.CALL, {"order": dict(order), "finish": finished}, label))
        if finished:
            self.finished += 1
            self.answered_orders += answered
            self.events.append(
                (CallbackKind.ORDER, {"order": dict(order), "finish": True}, f"order {order['id']}")
            )
        return finished


def build_campaign(
    *,
    orders: int = 200,
    duplicates: float = 0.0,
    reorder: bool = False,
    skew: int = 0,
    skewed: float = 1.0,
    bad_signatures: float = 0.0,
    serialization: str = "python",
    drop: float = 0.0,
    seed: int | None = None,
    run_id: str | None = None,
    span: int = 60,
    lines: int = 8,
    start: int | None = None,
) -> Campaign:
    """Plan a campaign of ``orders`` phone numbers, with the faults asked for.

    ``duplicates`` and ``bad_signatures`` are fractions of the genuine deliveries to send twice
    or to shadow with a forgery (sent just before the genuine one); ``reorder`` delivers about
    one in twenty late, and the PAUSED update after the RESUMED one; ``skew`` seconds are added
    to ``createTs`` of a ``skewed`` fraction of deliveries; ``drop`` is the fraction of genuine
    deliveries lost on the way (never posted, never copied). ``seed`` makes the shape repeatable;
    ids are fresh on every call unless ``run_id`` is given. ``span`` is how many seconds the
    campaign's creation times cover; ``lines`` how many orders are being called at once;
    ``start`` (unix seconds, default now) anchors the timestamps inside the payloads.
    """
    if orders < 1:
        raise ValueError("a campaign needs at least one order")
    if lines < 1 or span < 0:
        raise ValueError("lines must be at least 1 and span not negative")
    for name, fraction in (
        ("duplicates", duplicates),
        ("bad_signatures", bad_signatures),
        ("skewed", skewed),
        ("drop", drop),
    ):
        if not 0 <= fraction <= 1:
            raise ValueError(f"{name} must be a fraction between 0 and 1")
    serialize({}, serialization)  # refuse an unknown style before doing any work
    rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
    run_id = run_id or uuid_module.uuid4().hex[:10]
    plan = _plan(rng, orders, lines)
    ats = _creation_times(plan.events, span)
    start = int(time.time()) if start is None else start
    task_id, user_task_id = f"sim-{run_id}", f"campaign-{run_id}"
    genuine: list[Delivery] = []
    last_calls: dict[str, dict[str, Any]] = {}  # orderID -> its last call's callInfoDetail
    for created, ((kind, spec, label), at) in enumerate(zip(plan.events, ats, strict=True)):
        payload = _payload(
            kind,
            spec,
            rng=rng,
            task_id=task_id,
            user_task_id=user_task_id,
            run_id=run_id,
            moment=start + at,
        )
        if kind is CallbackKind.CALL:
            previous = last_calls.get(payload["orderID"])
            payload["callInfoDetail"] = _after(payload["callInfoDetail"], previous)
            last_calls[payload["orderID"]] = payload["callInfoDetail"]
        elif kind is CallbackKind.ORDER:  # the order's last call, as its call callback told it
            payload["callInfoDetail"] = _as_order_detail(last_calls[payload["orderID"]])
        genuine.append(
            Delivery(
                created=created,
                kind=kind,
                request_id=f"{run_id}-{created:05d}",
                payload=payload,
                body=serialize(payload, serialization),
                at=at,
                skewed=bool(skew) and rng.random() < skewed,
                label=label,
            )
        )
    if drop:
        for index in rng.sample(range(len(genuine)), round(drop * len(genuine))):
            genuine[index] = replace(genuine[index], lost=True)
    delivered = [d for d in genuine if not d.lost]
    sequence = list(genuine)
    if reorder:
        sequence = _reorder(sequence, rng)
    if bad_signatures:
        sequence = _forge(sequence, delivered, bad_signatures, rng, serialization, run_id)
    if duplicates:
        sequence = _duplicate(sequence, delivered, duplicates, rng)
    return Campaign(
        run_id=run_id,
        task_id=task_id,
        user_task_id=user_task_id,
        orders=orders,
        calls=plan.calls,
        span=ats[-1],
        skew=skew,
        deliveries=tuple(sequence),
    )


def _plan(rng: random.Random, orders: int, lines: int) -> _Plan:
    plan = _Plan(rng=rng, orders=orders)
    plan.task(TaskStatus.PENDING, "task PENDING")
    plan.task(TaskStatus.IN_PROGRESS, "task IN_PROGRESS")
    pause_after = orders * 2 // 5
    progress_every = max(1, orders // 5)
    waiting = [
        {"id": f"order-{number:05d}", "number": number, "attempts": 0, "max": rng.randint(1, 3)}
        for number in range(1, orders + 1)
    ]
    waiting.reverse()
    active: list[dict[str, Any]] = []
    paused = False
    while plan.finished < orders:
        if not paused and plan.finished >= pause_after:
            plan.task(TaskStatus.PAUSED, "task PAUSED")
            plan.task(TaskStatus.IN_PROGRESS, "task RESUMED")
            paused = True
        while waiting and len(active) < lines:
            active.append(waiting.pop())
        order = active[rng.randrange(len(active))]
        if plan.call(order, last_chance=order["attempts"] + 1 >= order["max"]):
            active.remove(order)
            done = plan.finished
            if done < orders and done % progress_every == 0 and done != pause_after:
                plan.task(TaskStatus.IN_PROGRESS, f"task progress {done}/{orders}")
    plan.task(TaskStatus.COMPLETED, "task COMPLETED")
    return plan


def _creation_times(events: Sequence[tuple[CallbackKind, Any, str]], span: int) -> list[int]:
    """Non-decreasing seconds over ``span``; each task update a second after the previous one,
    so the receiver can tell their order by ``createTs`` alone."""
    times: list[int] = []
    last_task = -1
    for index, (kind, _, _) in enumerate(events):
        at = span * index // max(len(events) - 1, 1)
        at = max(at, times[-1] if times else 0)
        if kind is CallbackKind.TASK:
            at = max(at, last_task + 1)
            last_task = at
        times.append(at)
    return times


def _payload(
    kind: CallbackKind,
    spec: dict[str, Any],
    *,
    rng: random.Random,
    task_id: str,
    user_task_id: str,
    run_id: str,
    moment: int,
) -> dict[str, Any]:
    """The body of one planned callback, created by the vendor at ``moment`` (unix seconds)."""
    common = {"taskID": task_id, "userTaskID": user_task_id, "sceneID": "sim-scene"}
    if kind is CallbackKind.TASK:
        return task_payload(**common, createTs=moment - 3600, **spec)
    order = spec["order"]
    name = _NAMES[order["number"] % len(_NAMES)]
    factory = order_payload if kind is CallbackKind.ORDER else call_payload
    return factory(
        **common,
        orderID=order["id"],
        userPhone=f"86138{order['number']:08d}",
        userName=name,
        finish=spec["finish"],
        other=f"crm-contact={order['number']}",
        callInfoDetail=_call_detail(kind, order, name, rng=rng, run_id=run_id, end=moment - 1),
    )


def _after(detail: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """A call attempt that starts after its order's previous attempt ended: the plan packs a
    campaign's creation times into seconds while a talk lasts minutes, and an order's last
    call must be its latest by start time (the vendor's and the store's rule)."""
    if previous is None or detail["callStartTs"] > previous["callEndTs"]:
        return detail
    start = previous["callEndTs"] + 1
    end = max(detail["callEndTs"], start + 1)
    talk = min(detail["callDuration"], end - start)
    answered = detail["callAnswerTs"] != 0
    return {
        **detail,
        "callStartTs": start,
        "callAnswerTs": end - talk if answered else 0,
        "callEndTs": end,
        "callDuration": talk,
    }


def _as_order_detail(call_detail: dict[str, Any]) -> dict[str, Any]:
    """A call callback's ``callInfoDetail`` as its order callback repeats it (the vendor lists
    ``callingNumber`` and ``lineAddress`` on the call page only)."""
    return {k: v for k, v in call_detail.items() if k not in ("callingNumber", "lineAddress")}


def _call_detail(
    kind: CallbackKind,
    order: dict[str, Any],
    name: str,
    *,
    rng: random.Random,
    run_id: str,
    end: int,
) -> dict[str, Any]:
    """``callInfoDetail`` of the order's last call attempt, which ended at ``end``."""
    call = order["last_call"]
    detail = _call_record(call, rng=rng, run_id=run_id, end=end)
    if kind is CallbackKind.CALL:  # the vendor documents these two on the call page only
        detail.update(callingNumber="02150000000", lineAddress=f"sip-line-{order['number'] % 8}")
    intents = call.get("intents", ())
    interested = any(_INTENTS[index][0] == "interested" for index in intents)
    detail.update(
        intents=[_intent(index) for index in intents],
        sms=[_sms(call, end)] if interested else [],
        agent=_agent(call, end),
        params=[{"name": "product", "value": "宽带套餐"}, {"name": "customerName", "value": name}],
    )
    return detail


def _call_record(
    call: dict[str, Any], *, rng: random.Random, run_id: str, end: int
) -> dict[str, Any]:
    """What the switch recorded of the call: its id, times, recording and how it ended."""
    answered, number = call["answered"], call["number"]
    talk = call.get("talk", 0)
    begin = end - talk - rng.randint(5, 25)
    hangup = ("NORMAL_CLEARING", "200") if answered else _NOT_ANSWERED[call["hangup"]]
    return {
        "callID": f"{run_id}-call-{number:05d}",
        "callStatus": _ANSWERED if answered else _NOT_ANSWERED_STATUS,
        "callStartTs": begin,
        "callAnswerTs": end - talk if answered else 0,
        "callEndTs": end,
        "callDuration": talk,
        "callAudioUrl": f"https://records.example/{run_id}/{number}.wav" if answered else "",
        "hangupCause": hangup[0],
        "termSipCode": hangup[1],
    }


def _intent(index: int) -> dict[str, Any]:
    tag, name, level = _INTENTS[index]
    return {"intentID": f"i{index + 1}", "intentTag": tag, "intentName": name, "intentLevel": level}


def _sms(call: dict[str, Any], end: int) -> dict[str, Any]:
    """The SMS the script sends an interested person just after the call."""
    return {
        "smsSendTs": end + 2,
        "sysMessageID": f"m-{call['number']}",
        "smsContent": "您好，感谢您的接听！优惠详情请查收。",  # noqa: RUF001 - Chinese punctuation
    }


_AGENT_FIELDS = (
    "agentName",
    "agentGroup",
    "agentLabel",
    "agentCallStatus",
    "agentCallElapsed",
    "manualCallStart",
    "manualCallAnswer",
    "manualCallEnd",
    "manualHangupBy",
)


def _agent(call: dict[str, Any], end: int) -> dict[str, Any]:
    """The human agent who took over the call, or every field null when none did."""
    if not call.get("agent"):
        return dict.fromkeys(_AGENT_FIELDS)
    talk = call.get("talk", 0)
    half = end - talk // 2
    values = ("李雷", "sales", "senior", 1, talk // 2, half, half + 1, end, 2)
    return dict(zip(_AGENT_FIELDS, values, strict=True))


def _reorder(sequence: list[Delivery], rng: random.Random) -> list[Delivery]:
    """Deliver the PAUSED update after the RESUMED one, and about one in twenty others late."""
    paused = next(i for i, d in enumerate(sequence) if d.label == "task PAUSED")
    late = sequence.pop(paused)
    sequence.insert(paused + 1, replace(late, reordered=True))  # after "task RESUMED"
    others = [d.created for d in sequence if d.kind is not CallbackKind.TASK]
    for created in rng.sample(others, min(len(others), max(1, len(sequence) // 20))):
        position = _position(sequence, created)
        moved = sequence.pop(position)
        lag = rng.randint(*_REORDER_LAG)
        sequence.insert(min(position + lag, len(sequence)), replace(moved, reordered=True))
    return sequence


def _forge(
    sequence: list[Delivery],
    genuine: list[Delivery],
    fraction: float,
    rng: random.Random,
    serialization: str,
    run_id: str,
) -> list[Delivery]:
    """Put a forgery just before some genuine deliveries: signed with a key that is not the
    account's (a fresh requestID), or the genuine headers over a body changed after signing (an
    attacker replaying them to redirect an SMS or close the task)."""
    targets = rng.sample(genuine, round(fraction * len(genuine)))
    for number, target in enumerate(sorted(targets, key=lambda d: d.created)):
        payload = json.loads(target.body)
        if number % 2:
            if target.kind is CallbackKind.TASK:
                payload["taskStatus"] = int(TaskStatus.COMPLETED)
            else:
                payload["userPhone"] = "8617000000000"
            forged = replace(
                target,
                payload=payload,
                body=serialize(payload, serialization),
                role=Role.FORGED,
                forgery="tampered-body",
                reordered=False,
            )
        else:
            forged = replace(
                target,
                request_id=f"{run_id}-forged-{number:05d}",
                role=Role.FORGED,
                forgery="wrong-key",
                reordered=False,
            )
        sequence.insert(_position(sequence, target.created), forged)
    return sequence


def _duplicate(
    sequence: list[Delivery], genuine: list[Delivery], fraction: float, rng: random.Random
) -> list[Delivery]:
    """Send some genuine deliveries again, a few deliveries after the original."""
    for target in rng.sample(genuine, round(fraction * len(genuine))):
        position = _position(sequence, target.created)
        lag = rng.randint(*_DUPLICATE_LAG)
        copy = replace(sequence[position], role=Role.DUPLICATE, reordered=False)
        sequence.insert(min(position + lag, len(sequence)), copy)
    return sequence


def _position(sequence: list[Delivery], created: int) -> int:
    """Where the genuine delivery created ``created``-th is in the sending order."""
    return next(
        i for i, d in enumerate(sequence) if d.created == created and d.role is Role.GENUINE
    )


# -- Running a campaign over HTTP ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """The receiver's timestamp window (``CALLBOT_MAX_AGE``, ``CALLBOT_MAX_FUTURE_SKEW``)."""

    max_age: int = 300
    max_future_skew: int = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """One delivery as sent and answered."""

    delivery: Delivery
    create_ts: int
    #: The answers a correct receiver may give, as ``"200/0"`` strings.
    expected: frozenset[str]
    reply: HttpReply | None
    #: Why there was no reply (connection refused, timeout).
    error: str | None = None

    @property
    def outcome(self) -> str:
        return self.reply.outcome if self.reply is not None else "no reply"

    @property
    def as_expected(self) -> bool:
        return self.outcome in self.expected


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """What the receiver answered to a campaign, against what a correct receiver answers."""

    campaign: Campaign
    url: str
    results: tuple[Result, ...]
    elapsed: float

    @property
    def unexpected(self) -> list[Result]:
        """Answers a correct receiver does not give, and every genuine delivery of which no copy
        was accepted (a 409/7 is right only while another copy is being processed)."""
        accepted = {r.delivery.created for r in self.results if r.outcome == "200/0"}
        return [
            result
            for result in self.results
            if not result.as_expected
            or (
                result.delivery.role is Role.GENUINE
                and result.outcome == "409/7"
                and result.delivery.created not in accepted
            )
        ]

    @property
    def ok(self) -> bool:
        """No answer was unexpected: every genuine delivery accepted, every forgery refused."""
        return not self.unexpected

    def counts(self) -> Counter[tuple[str, str, str]]:
        """How many deliveries per (role, expected answers, actual answer)."""
        return Counter(_row(result) for result in self.results)

    def by_outcome(self) -> Counter[str]:
        """How many answers per ``"status/retCode"``."""
        return Counter(result.outcome for result in self.results)

    def report(self, *, limit: int = 20) -> list[str]:
        """The summary as printed by ``flask callbot simulate``: one line per outcome, then each
        unexpected answer (up to ``limit``)."""
        unexpected = self.unexpected
        lines = [*self._headline(), *self._table(flagged={_row(r) for r in unexpected})]
        if not unexpected:
            return [*lines, "every answer was as expected"]
        return [*lines, *_explain(unexpected, limit)]

    def _headline(self) -> list[str]:
        """The task, and what was sent: how many of each kind, and of each fault."""
        campaign = self.campaign
        kinds = Counter(d.kind.value for d in campaign.deliveries if d.role is Role.GENUINE)
        faults = [
            f"{campaign.count(Role.DUPLICATE)} duplicates",
            f"{campaign.count(Role.FORGED)} forged",
            f"{sum(d.reordered for d in campaign.deliveries)} reordered",
            f"skew {campaign.skew:+d} s on {sum(d.skewed for d in campaign.genuine)}",
        ]
        lost = sum(d.lost for d in campaign.deliveries)
        if lost:
            faults.append(f"{lost} lost (never sent)")
        return [
            f"task {campaign.task_id}: {campaign.orders} orders, {campaign.calls} calls",
            f"sent {len(self.results)} deliveries to {self.url} in {self.elapsed:.1f} s: "
            f"{kinds['task']} task, {kinds['order']} order, {kinds['call']} call callbacks; "
            + ", ".join(faults),
        ]

    def _table(self, *, flagged: set[tuple[str, str, str]]) -> list[str]:
        """A row per (role, expected answers, actual answer) with its count; ``flagged`` rows
        marked UNEXPECTED."""
        rows = [
            (*row, str(count), "UNEXPECTED" if row in flagged else "")
            for row, count in sorted(self.counts().items())
        ]
        return render_table(("ROLE", "EXPECTED", "ANSWER", "COUNT", ""), rows)


def _explain(unexpected: list[Result], limit: int) -> list[str]:
    """A line per unexpected answer (up to ``limit``): what was sent, expected and answered."""
    lines = [f"{len(unexpected)} unexpected answer(s):"]
    for result in unexpected[:limit]:
        d = result.delivery
        what = d.role.value + (f", {d.forgery}" if d.forgery else "")
        why = result.error or (result.reply.ret_msg if result.reply else "")
        lines.append(
            f"  {d.kind.value} {d.request_id} ({what}): expected "
            f"{' or '.join(sorted(result.expected))}, got {result.outcome}: {why[:120]}"
        )
    if len(unexpected) > limit:
        lines.append(f"  ... and {len(unexpected) - limit} more")
    return lines


def _row(result: Result) -> tuple[str, str, str]:
    return (result.delivery.role.value, " or ".join(sorted(result.expected)), result.outcome)


def run_campaign(
    campaign: Campaign,
    base_url: str,
    *,
    secret_key: str,
    uuid: str,
    window: Window | None = None,
    concurrency: int = 4,
    delay: float = 0.0,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
    progress: Callable[[Result], None] | None = None,
) -> Summary:
    """Post ``campaign`` to the receiver at ``base_url`` (its blueprint prefix included).

    Deliveries are submitted in order, ``delay`` seconds apart, to ``concurrency`` senders. A
    genuine task update goes alone (after everything before it is answered, before anything
    after it is sent), so the task's life arrives as planned; reordering is part of the plan.
    ``progress`` is called (in this thread) as each answer comes back. ``window`` is the
    receiver's timestamp window, used to tell which skewed deliveries it must refuse.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    window = window or Window()
    signer = _Signer(campaign, clock, secret_key=secret_key, uuid=uuid)
    # With several senders, a duplicate may be in flight with its original: either may get 409/7.
    doubled = _duplicated(campaign) if concurrency > 1 else set()
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="callbot-sim") as pool:
        answers = _Answers(pool, progress)
        for position, delivery in enumerate(campaign.deliveries):
            if delivery.lost:
                continue
            if delay and position:
                time.sleep(delay)
            # A task update goes alone, so the task's life arrives in the planned order.
            alone = delivery.kind is CallbackKind.TASK and delivery.role is Role.GENUINE
            if alone:
                answers.drain()
            headers, create_ts = signer.sign(delivery)
            concurrent = delivery.created in doubled
            expected = _expected(delivery, create_ts, clock(), window, concurrent=concurrent)
            url = callback_url(base_url, delivery.kind)
            answers.submit(partial(_deliver, url, delivery, headers, create_ts, expected, timeout))
            if alone:
                answers.drain()
            answers.collect()
        answers.drain()
    return Summary(
        campaign=campaign,
        url=base_url,
        results=tuple(answers.results),
        elapsed=time.monotonic() - began,
    )


class _Stamper:
    """``createTs`` per creation index, stamped when first needed and never after a later one."""

    def __init__(self, genuine: list[Delivery], span: int, clock: Callable[[], float]) -> None:
        self.ats = [d.at for d in genuine]
        self.span = span
        self.clock = clock
        self.stamps: list[int] = []

    def create_ts(self, created: int) -> int:
        if created >= len(self.stamps):
            now = int(self.clock())
            self.stamps += [now - self.span + at for at in self.ats[len(self.stamps) : created + 1]]
        return self.stamps[created]


class _Signer:
    """The headers each delivery is sent with: a copy or a tampered body reuses its genuine
    delivery's headers, a wrong-key forgery is signed with a key that is not the account's."""

    def __init__(
        self, campaign: Campaign, clock: Callable[[], float], *, secret_key: str, uuid: str
    ) -> None:
        self.genuine = campaign.genuine
        self.skew = campaign.skew
        self.stamper = _Stamper(self.genuine, campaign.span, clock)
        self.secret_key = secret_key
        self.forged_key = "forged-" + secrets.token_hex(16)
        self.uuid = uuid
        self.signed: dict[int, dict[str, str]] = {}

    def sign(self, delivery: Delivery) -> tuple[dict[str, str], int]:
        """The headers for ``delivery``, and the ``createTs`` they carry."""
        create_ts = self.stamper.create_ts(delivery.created) + (self.skew if delivery.skewed else 0)
        if delivery.forgery == "wrong-key":
            return self._headers(delivery, self.forged_key, create_ts), create_ts
        if delivery.created not in self.signed:
            original = self.genuine[delivery.created]
            self.signed[delivery.created] = self._headers(original, self.secret_key, create_ts)
        return self.signed[delivery.created], create_ts

    def _headers(self, delivery: Delivery, key: str, create_ts: int) -> dict[str, str]:
        return sign_headers(
            delivery.body,
            secret_key=key,
            uuid=self.uuid,
            request_id=delivery.request_id,
            create_ts=create_ts,
        )


def _duplicated(campaign: Campaign) -> set[int]:
    """The creation indexes of the genuine deliveries the campaign sends more than once."""
    return {d.created for d in campaign.deliveries if d.role is Role.DUPLICATE}


def _deliver(
    url: str,
    delivery: Delivery,
    headers: dict[str, str],
    create_ts: int,
    expected: frozenset[str],
    timeout: float,
) -> Result:
    """POST one delivery (in a sender thread): its result, with the reply or why there was none."""
    try:
        reply = post_callback(url, delivery.body, headers, timeout=timeout)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)  # urllib wraps the socket's error
        cause = reason if isinstance(reason, BaseException) else exc
        error = f"{type(cause).__name__}: {reason}"
        return Result(
            delivery=delivery, create_ts=create_ts, expected=expected, reply=None, error=error
        )
    return Result(delivery=delivery, create_ts=create_ts, expected=expected, reply=reply)


class _Answers:
    """The sender threads' results, taken in (and reported to ``progress``) in this thread, in
    the order they come back."""

    def __init__(self, pool: ThreadPoolExecutor, progress: Callable[[Result], None] | None) -> None:
        self.pool = pool
        self.progress = progress
        self.queue: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self.results: list[Result] = []
        self.submitted = 0

    def submit(self, deliver: Callable[[], Result]) -> None:
        self.pool.submit(lambda: self.queue.put(deliver()))
        self.submitted += 1

    def collect(self) -> None:
        """Take in the results already back, without waiting."""
        while True:
            try:
                result = self.queue.get(block=False)
            except queue.Empty:
                return
            self._take(result)

    def drain(self) -> None:
        """Wait for the result of everything submitted."""
        while len(self.results) < self.submitted:
            self._take(self.queue.get())

    def _take(self, result: Result) -> None:
        self.results.append(result)
        if self.progress is not None:
            self.progress(result)


def _expected(
    delivery: Delivery, create_ts: int, now: float, window: Window, *, concurrent: bool
) -> frozenset[str]:
    """The answers a correct receiver may give; ``concurrent``: a copy may be in flight."""
    refused = frozenset({"401/6"})
    if delivery.role is Role.FORGED:
        return refused
    accepted = {"200/0"}
    if concurrent:
        accepted.add("409/7")  # another copy is being processed: "try later"
    age = now - create_ts
    if age > window.max_age + _MARGIN or -age > window.max_future_skew + _MARGIN:
        return refused
    if age < window.max_age - _MARGIN and -age < window.max_future_skew - _MARGIN:
        return frozenset(accepted)
    return frozenset(accepted) | refused  # on the window's edge: either answer is right


# -- What the vendor knows: its API's side of a campaign -------------------------------------------


def vendor_book(campaign: Campaign, book: VendorBook | None = None) -> VendorBook:
    """The vendor's record of ``campaign`` (every genuine delivery, lost ones included, in
    creation order), for a fake of its API (:mod:`flask_callbot.vendor_api`) to answer from."""
    book = book if book is not None else VendorBook()
    for delivery in campaign.genuine:
        book.record(delivery.kind, delivery.payload)
    return book


def differences(store: StoreReader, book: VendorBook, user_task_id: str) -> list[str]:
    """Where the store's view of one task differs from the vendor's: its status and statistics,
    each order's finish and last call, and the calls never reported. Empty when level."""
    vendor_task = book.task(user_task_id)
    if vendor_task is None:
        return [f"the vendor does not know {user_task_id}"]
    task_id = str(vendor_task["taskID"])
    found: list[str] = []
    task = store.get_task(task_id)
    stat = vendor_task.get("taskStat") or {}
    if task is None or task.status is None or int(task.status) != vendor_task["taskStatus"]:
        found.append(
            f"task {task_id}: status {task and task.status} != {vendor_task['taskStatus']}"
        )
    elif [task.stats[name] for name in _STAT_KEYS] != [
        stat.get(key) for key in _STAT_KEYS.values()
    ]:
        found.append(f"task {task_id}: statistics differ")
    _, reported_calls = store.reported(task_id)
    for order in book.orders(user_task_id):
        order_id = str(order["orderID"])
        calls = sorted(
            order["callInfoDetailList"], key=lambda c: (c.get("callStartTs") or 0, c["callID"])
        )
        stored = store.get_order(task_id, order_id)
        if stored is None:
            found.append(f"order {order_id}: missing")
            continue
        if stored.last_call_id != calls[-1]["callID"] or stored.finish != order.get("finish"):
            found.append(f"order {order_id}: last call or finish differs")
        missed = [c["callID"] for c in calls if (order_id, c["callID"]) not in reported_calls]
        if missed:
            found.append(f"order {order_id}: calls never reported {missed}")
    return found


#: The task statistics as the store names them, with the vendor's keys.
_STAT_KEYS = {
    "answer_order_count": "answerOrderCount",
    "finish_order_count": "finishOrderCount",
    "total_order_count": "totalOrderCount",
    "finish_rate": "finishRate",
    "total_answer_call": "totalAnswerCall",
    "total_call": "totalCall",
    "answer_rate": "answerRate",
}


def repair(
    app: Flask, campaign: Campaign, faults: Faults | None = None
) -> tuple[Report, list[str]]:
    """Serve the vendor's API for ``campaign`` on loopback (with ``faults``, if given) and
    reconcile ``app`` against it, orders included; the report, and what still differs.

    ``app`` must hold the store the campaign was played against. Needs flask-callbot[api].
    """
    from .client import CallbotAPI
    from .reconcile import reconcile

    state = get_state(app)
    api = state.settings.api
    vendor = FakeVendor(uuid=api.uuid, secret_key=api.secret_key, faults=faults, clock=state.clock)
    vendor_book(campaign, vendor.book)
    with (
        serve_vendor_api(vendor) as api_url,
        CallbotAPI.from_settings(replace(api, base_url=api_url), clock=state.clock) as client,
    ):
        report = reconcile(app, client, user_task_ids=[campaign.user_task_id], orders=True)
    return report, differences(state.store.reader, vendor.book, campaign.user_task_id)
