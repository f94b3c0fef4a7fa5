"""A loopback fake of the vendor's outbound API, for the simulator and the tests (a tool).

:class:`VendorBook` records what the vendor knows, fed with the callback payloads it sends: a
task payload becomes the task's listTask object, an order or call payload the order's
listOrderDetail object and one entry of its ``callInfoDetailList``. :class:`FakeVendor` is the
WSGI app answering listTask, listOrder, listOrderDetail, mgrTaskStatus, ping and listCall from
a book, and :func:`serve_vendor_api` serves it over real HTTP on a loopback port.

Like the vendor it checks every request's signature (the receiver's own checks: header form,
time window, uuid, sign over the raw bytes, MD5 unless the ``algorithm`` header says
otherwise) and answers refusals with its retCodes (6, 6001, 6002; 2, 3, 4 for parameters).
Every answer to an authentic request is signed as the client expects (see
:mod:`flask_callbot.client`): ``requestID`` and ``uuid`` echoed, ``createTs`` now, ``sign`` over
the raw answer body, ``algorithm``; refusals of the signature itself go unsigned.

Undocumented shapes are this fake's choices: listOrder answers ``orderList`` (each order with
its last call as ``callInfoDetail``) and listCall ``callList`` (call objects with their
``orderID``, ``userTaskID`` and ``taskID``). listOrder filters on ``orderID``, ``finish`` and
``callStatus`` only; listTask ignores ``taskName``. Stdlib and werkzeug only: no httpx.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid as uuid_module
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import Headers
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .errors import InvalidField, MalformedBody, MissingField, RequestRejected
from .events import CallbackKind, TaskStatus
from .schemas import decode_body
from .signing import ALGORITHMS, AuthHeaders, authenticate
from .wire import serialize, sign_headers

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: Where the v3 endpoints live (as in :mod:`flask_callbot.client`).
API_PATH = "/callcentre/api/v3/"
#: listOrderDetail refuses more order ids than this in one call.
ORDER_DETAIL_LIMIT = 500
#: mgrTaskStatus ``taskOperate`` -> the status it leaves the task in.
_OPERATIONS = {1: TaskStatus.IN_PROGRESS, 2: TaskStatus.PAUSED, 3: TaskStatus.COMPLETED}
_FORGED_KEY = "not-the-account-secret"


@dataclass
class Faults:
    """Faults to inject, settable while the server runs: each counter is how many of the next
    requests suffer it (each request consumes one of every counter it meets)."""

    #: Answer retCode 7 (system busy).
    busy: int = 0
    #: Answer HTTP ``http_status`` with a plain-text body.
    http_errors: int = 0
    http_status: int = 503
    #: Sleep ``delay`` seconds before answering.
    slow: int = 0
    delay: float = 0.0
    #: Sign the answer with a wrong key.
    forged: int = 0
    #: Send the answer without its ``sign`` header.
    unsigned: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take(self, name: str) -> bool:
        """Consume one of counter ``name`` if any is left."""
        with self._lock:
            left: int = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
            return left > 0


class VendorBook:
    """What the vendor knows about tasks and orders, safe to feed and read from any thread.

    Readers get deep copies. Feed payloads in the vendor's creation order: a later payload
    replaces what an earlier one said.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, dict[str, Any]] = {}
        self._orders: dict[tuple[str, str], dict[str, Any]] = {}

    def record(self, kind: CallbackKind | str, payload: dict[str, Any]) -> None:
        """Take in one callback payload of ``kind`` (``"task"``, ``"order"`` or ``"call"``)."""
        if CallbackKind(kind) is CallbackKind.TASK:
            self.record_task(payload)
        else:
            self.record_number(payload)

    def record_task(self, payload: dict[str, Any]) -> None:
        """A task callback payload becomes (or replaces) the task's listTask object."""
        user_task_id = _text(payload, "userTaskID")
        task = {key: value for key, value in payload.items() if key != "callbackType"}
        with self._lock:
            self._tasks[user_task_id] = copy.deepcopy(task)

    def record_number(self, payload: dict[str, Any]) -> None:
        """An order or call payload updates the order's fields and adds (or replaces, by
        ``callID``) its call in ``callInfoDetailList``."""
        key = (_text(payload, "userTaskID"), _text(payload, "orderID"))
        fields = {k: v for k, v in payload.items() if k not in ("callbackType", "callInfoDetail")}
        call = payload.get("callInfoDetail")
        with self._lock:
            order = self._orders.setdefault(key, {"callInfoDetailList": []})
            order.update(copy.deepcopy(fields))
            if isinstance(call, dict) and call.get("callID"):
                calls = order["callInfoDetailList"]
                calls[:] = [known for known in calls if known.get("callID") != call["callID"]]
                calls.append(copy.deepcopy(call))

    def set_task_status(self, user_task_id: str, status: int) -> dict[str, Any] | None:
        """Change a task's ``taskStatus``; the task after the change, ``None`` if unknown."""
        with self._lock:
            task = self._tasks.get(user_task_id)
            if task is None:
                return None
            task["taskStatus"] = int(status)
            return copy.deepcopy(task)

    def delete_undialed(self, user_task_id: str) -> int:
        """Drop the task's orders that have no call yet (mgrTaskStatus ``delCall``)."""
        with self._lock:
            undialed = [
                key
                for key, order in self._orders.items()
                if key[0] == user_task_id and not order["callInfoDetailList"]
            ]
            for key in undialed:
                del self._orders[key]
            return len(undialed)

    def task(self, user_task_id: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._tasks.get(user_task_id))

    def tasks(self) -> list[dict[str, Any]]:
        """Every task, in the order first recorded."""
        with self._lock:
            return copy.deepcopy(list(self._tasks.values()))

    def order(self, user_task_id: str, order_id: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._orders.get((user_task_id, order_id)))

    def orders(self, user_task_id: str | None = None) -> list[dict[str, Any]]:
        """Every order (of one task, if given), in the order first recorded."""
        with self._lock:
            chosen = [o for (t, _), o in self._orders.items() if user_task_id in (None, t)]
            return copy.deepcopy(chosen)


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the fake saw it, and what it answered."""

    endpoint: str
    #: Case-insensitive, as received.
    headers: Headers = field(repr=False)
    body: bytes = field(repr=False)
    http_status: int
    ret_code: int | None


class _Answer(Exception):
    """A finished answer that is not the handler's success (internal)."""

    def __init__(self, response: Response, ret_code: int | None) -> None:
        super().__init__(ret_code)
        self.response, self.ret_code = response, ret_code


class FakeVendor:
    """The vendor's API as a WSGI app, over a :class:`VendorBook`, with :class:`Faults`.

    ``calls`` counts the requests of each endpoint (faulted ones included); ``requests`` keeps
    the last ``history`` of them with their exact headers and bytes.
    """

    def __init__(
        self,
        *,
        uuid: str,
        secret_key: str,
        book: VendorBook | None = None,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
        max_age: int = 300,
        max_future_skew: int = 60,
        history: int = 1000,
    ) -> None:
        self.uuid = uuid
        self._secret_key = secret_key
        self.book = book if book is not None else VendorBook()
        self.faults = faults if faults is not None else Faults()
        self.clock = clock
        self.max_age = max_age
        self.max_future_skew = max_future_skew
        self.calls: Counter[str] = Counter()
        self.requests: deque[ReceivedRequest] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set when the server stops: cuts a slow answer short
        self._handlers: dict[str, Callable[[dict[str, Any], AuthHeaders], dict[str, Any]]] = {
            "listTask": self._list_task,
            "listOrder": self._list_order,
            "listOrderDetail": self._list_order_detail,
            "mgrTaskStatus": self._manage_task,
            "ping": self._ping,
            "listCall": self._list_call,
        }

    def __repr__(self) -> str:
        return f"FakeVendor(uuid={self.uuid!r}, secret_key='***')"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        endpoint = request.path.removeprefix(API_PATH)
        if not request.path.startswith(API_PATH) or endpoint not in self._handlers:
            return Response("no such endpoint", 404)(environ, start_response)
        if request.method != "POST":
            return Response("POST only", 405)(environ, start_response)
        body = request.get_data()
        with self._lock:
            self.calls[endpoint] += 1
        ret_code: int | None = 0
        try:
            response = self._answer(endpoint, body, request)
        except _Answer as answer:
            response, ret_code = answer.response, answer.ret_code
        received = ReceivedRequest(
            endpoint, Headers(request.headers), body, response.status_code, ret_code
        )
        with self._lock:
            self.requests.append(received)
        return response(environ, start_response)

    def _answer(self, endpoint: str, body: bytes, request: Request) -> Response:
        if self.faults.take("slow"):
            self._wake.wait(self.faults.delay)
        if self.faults.take("http_errors"):
            raise _Answer(Response("unavailable", self.faults.http_status), None)
        try:
            headers = list(request.headers.items())
            # The vendor's rule: the algorithm header names the digest, MD5 when it is absent.
            algorithms = tuple(ALGORITHMS) if request.headers.get("algorithm") else ("MD5",)
            auth = authenticate(
                headers,
                body,
                now=self.clock(),
                uuid=self.uuid,
                secret_keys=[self._secret_key],
                algorithms=algorithms,
                max_age=self.max_age,
                max_future_skew=self.max_future_skew,
            )
        except RequestRejected as exc:  # not the account's: answered unsigned
            raise _Answer(
                self._envelope(exc.http_status, exc.ret_code, exc.message), exc.ret_code
            ) from None
        if self.faults.take("busy"):
            raise _Answer(self._envelope(200, 7, "system busy", auth=auth), 7)
        try:
            answer = self._handlers[endpoint](decode_body(body), auth)
        except RequestRejected as exc:
            raise _Answer(
                self._envelope(exc.http_status, exc.ret_code, exc.message, auth=auth), exc.ret_code
            ) from None
        if endpoint == "ping":  # an envelope of its own
            return self._signed(200, answer, auth)
        return self._envelope(200, 0, "success", auth=auth, **answer)

    def _envelope(
        self,
        status: int,
        ret_code: int,
        message: str,
        *,
        auth: AuthHeaders | None = None,
        **fields: Any,
    ) -> Response:
        payload = {
            "retCode": ret_code,
            "retMsg": message,
            "responseID": uuid_module.uuid4().hex,
            **fields,
        }
        if auth is None:
            return Response(serialize(payload, "compact"), status, mimetype="application/json")
        return self._signed(status, payload, auth)

    def _signed(self, status: int, payload: dict[str, Any], auth: AuthHeaders) -> Response:
        """The answer signed over its raw bytes, echoing requestID and uuid (or faulted)."""
        body = serialize(payload, "compact")
        headers = {"Content-Type": "application/json"}
        if not self.faults.take("unsigned"):
            key = _FORGED_KEY if self.faults.take("forged") else self._secret_key
            headers |= sign_headers(
                body,
                secret_key=key,
                uuid=auth.uuid,
                algorithm=auth.algorithm or "MD5",
                request_id=auth.request_id,
                create_ts=int(self.clock()),
                algorithm_header=True,
            )
        return Response(body, status, headers)

    # --- the endpoints -------------------------------------------------------------------

    def _list_task(self, payload: dict[str, Any], auth: AuthHeaders) -> dict[str, Any]:
        _product(payload)
        query = _object(payload, "queryConditions")
        ids = _optional_list(query, "userTaskID", str)
        statuses = _optional_list(query, "taskStatus", int)
        scene = query.get("sceneID")
        start, end = query.get("startTs"), query.get("endTs")
        tasks = [
            task
            for task in self.book.tasks()
            if (ids is None or task.get("userTaskID") in ids)
            and (statuses is None or task.get("taskStatus") in statuses)
            and scene in (None, task.get("sceneID"))
            and _within(task.get("createTs"), start, end)
        ]
        return {"taskData": _page(payload, tasks)}

    def _list_order(self, payload: dict[str, Any], auth: AuthHeaders) -> dict[str, Any]:
        user_task_id = _text(payload, "userTaskID")
        options = _object(payload, "options")
        order_ids = _optional_list(options, "orderID", str)
        call_statuses = _optional_list(options, "callStatus", int)
        finish = options.get("finish")
        orders = []
        for order in self.book.orders(user_task_id):
            calls = order.pop("callInfoDetailList")
            order["callInfoDetail"] = calls[-1] if calls else {}
            if (
                (order_ids is None or order.get("orderID") in order_ids)
                and (finish is None or bool(order.get("finish")) == bool(finish))
                and (
                    call_statuses is None
                    or order["callInfoDetail"].get("callStatus") in call_statuses
                )
            ):
                orders.append(order)
        return {"orderList": _page(payload, orders)}

    def _list_order_detail(self, payload: dict[str, Any], auth: AuthHeaders) -> dict[str, Any]:
        user_task_id = _text(payload, "userTaskID")
        order_ids = _optional_list(payload, "orderList", str)
        if order_ids is None:
            raise MissingField("missing field(s): orderList")
        if len(order_ids) > ORDER_DETAIL_LIMIT:
            raise InvalidField(f"orderList: at most {ORDER_DETAIL_LIMIT} order ids")
        found = (self.book.order(user_task_id, order_id) for order_id in dict.fromkeys(order_ids))
        return {"orderDetailList": [order for order in found if order is not None]}

    def _manage_task(self, payload: dict[str, Any], auth: AuthHeaders) -> dict[str, Any]:
        _product(payload)
        user_task_id = _text(payload, "userTaskID")
        operation = payload.get("taskOperate")
        if operation is None:
            raise MissingField("missing field(s): taskOperate")
        if operation not in _OPERATIONS or isinstance(operation, bool):
            raise InvalidField("taskOperate: must be 1, 2 or 3")
        if payload.get("delCall", 0) not in (0, 1):
            raise InvalidField("delCall: must be 0 or 1")
        task = self.book.set_task_status(user_task_id, _OPERATIONS[operation])
        if task is None:
            raise InvalidField("userTaskID: no such task")
        if payload.get("delCall") == 1:
            self.book.delete_undialed(user_task_id)
        return {"taskID": task.get("taskID"), "taskStatus": task["taskStatus"]}

    def _ping(self, payload: dict[str, Any], auth: AuthHeaders) -> dict[str, Any]:
        return {
            "data": payload.get("data"),
            "timestamp": int(self.clock()),
            "code": 0,
            "msg": "success",
            "reqId": auth.request_id,
        }

    def _list_call(self, payload: dict[str, Any], auth: AuthHeaders) -> dict[str, Any]:
        options = _object(payload, "options")
        call_ids = _optional_list(options, "callID", str)
        start, end = options.get("startTs"), options.get("endTs")
        calls = [
            {
                **call,
                "orderID": order.get("orderID"),
                "userTaskID": order.get("userTaskID"),
                "taskID": order.get("taskID"),
            }
            for order in self.book.orders()
            for call in order["callInfoDetailList"]
            if (call_ids is None or call.get("callID") in call_ids)
            and _within(call.get("callStartTs"), start, end)
        ]
        return {"callList": _page(payload, calls)}


@contextmanager
def serve_vendor_api(
    vendor: FakeVendor, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Serve ``vendor`` over HTTP in a thread (port 0: a free one); yields its base URL."""
    server = make_server(host, port, vendor, threaded=True, request_handler=_QuietHandler)
    vendor._wake.clear()
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="fake-vendor-api",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        vendor._wake.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request: the fake is used in tests and simulations."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if value is None or value == "":
        raise MissingField(f"missing field(s): {key}")
    if not isinstance(value, str):
        raise InvalidField(f"{key}: must be a string")
    return value


def _product(payload: dict[str, Any]) -> None:
    if _text(payload, "productID") != "callbot":
        raise InvalidField("productID: must be callbot")


def _object(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedBody(f"{key} is not an object")
    return value


def _optional_list(payload: dict[str, Any], key: str, kind: type) -> list[Any] | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(item, kind) and not isinstance(item, bool) for item in value
    ):
        raise MalformedBody(f"{key} is not a list of {kind.__name__}")
    return value


def _page(payload: dict[str, Any], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``page`` (from 1) of ``size`` items."""
    page, size = payload.get("page"), payload.get("size")
    if page is None or size is None:
        raise MissingField("missing field(s): page, size")
    if not isinstance(page, int) or not isinstance(size, int) or page < 1 or size < 1:
        raise InvalidField("page, size: must be positive integers")
    return items[(page - 1) * size : page * size]


def _within(value: Any, start: Any, end: Any) -> bool:
    """Whether a timestamp is in ``[start, end]`` (either bound may be absent)."""
    if start is None and end is None:
        return True
    if not isinstance(value, int):
        return False
    return (start is None or value >= start) and (end is None or value <= end)
