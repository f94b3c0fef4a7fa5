"""A client of the Callbot v3 outbound API (what a reconciler asks the vendor), on httpx.

Every call is a POST whose JSON body is serialised once (compact, raw UTF-8, as the vendor's Go
server writes) and those exact bytes are signed and sent, with the request headers of the
callbacks' scheme (``requestID``, ``uuid``, ``createTs``, ``sign``, ``algorithm``).

Retries: retCode 7 (system busy), HTTP 5xx and 429, timeouts and connection errors are retried
with exponential backoff, each attempt freshly signed; :class:`ApiUnavailable` names the last
cause once they are spent. mgrTaskStatus is retried too: a repeat of start, pause or complete
leaves the task as one call would.

Response signature, an inference: the vendor's pages say the response carries ``requestID`` and
``uuid`` "consistent with the request", ``createTs`` (response time), ``sign`` "generated the
same way as the request's sign" and an optional ``algorithm``, but not which body the sign
covers. We take it to be the same scheme over the raw response body with the response's
``createTs``, the request's ``requestID`` and ``uuid`` (which the response must echo when it
sends them) and the same secret. The digest is the response's ``algorithm`` header, else the one
the sign's length names. ``response_signature`` picks what to do: ``"verify-if-present"``
(default; a wrong sign is refused), ``"require"`` (an unsigned answer is refused too) or
``"off"`` (for when the inference turns out wrong).

The vendor documents no total count for its lists: paging stops at a page shorter than asked
(or empty). A vendor that capped ``size`` below ``page_size`` would end a listing early, so keep
``page_size`` modest. listOrder's reply is not documented at all: its list is read from
``orderList``, ``orderData`` or ``data`` (see :data:`ORDER_LIST_KEYS`).

The secret is never logged, never in a repr and never in an error message.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid as uuid_module
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeGuard, get_args

import httpx

from .config import DEFAULTS, ApiSettings
from .errors import MalformedBody, RequestRejected
from .schemas import decode_body
from .signing import ALGORITHMS, is_well_formed_uuid, parse_auth_headers, verify_signature
from .wire import serialize, sign_headers

logger = logging.getLogger("flask_callbot")

#: The vendor's production API (``CALLBOT_API_BASE_URL``'s default).
DEFAULT_BASE_URL: str = DEFAULTS["CALLBOT_API_BASE_URL"]
#: Where the v3 endpoints live under the base URL.
API_PATH = "/callcentre/api/v3/"
#: listOrderDetail takes at most this many order ids per call.
ORDER_DETAIL_CHUNK = 500
#: userTaskIDs per listTask query: the vendor states no limit, this keeps each body small.
TASK_IDS_PER_QUERY = 100
#: Where listOrder's undocumented reply may keep its list, tried in this order.
ORDER_LIST_KEYS = ("orderList", "orderData", "data")

ResponseSignature = Literal["verify-if-present", "require", "off"]
_SIGNATURE_MODES: tuple[str, ...] = get_args(ResponseSignature)
_BUSY = 7
_RETRY_STATUSES = frozenset({429})
_MAX_MESSAGE = 200  # characters of a vendor's retMsg quoted in an error


class TaskOperation(enum.IntEnum):
    """mgrTaskStatus ``taskOperate``."""

    START = 1
    PAUSE = 2
    COMPLETE = 3


class ApiError(Exception):
    """Base of the API client's errors; ``ret_code`` speaks the vendor's retCode vocabulary.

    ``ret_msg`` and ``response_id`` are the vendor's when it answered; ``path`` is the endpoint.
    Not a :class:`~flask_callbot.errors.CallbotError`: those are the answers the receiver gives
    (the OpenAPI document and the request pipeline read them).
    """

    ret_code = 5001

    def __init__(
        self,
        message: str,
        *,
        path: str,
        ret_code: int | None = None,
        ret_msg: str = "",
        response_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        if ret_code is not None:
            self.ret_code = ret_code
        self.ret_msg = ret_msg
        self.response_id = response_id


class ApiRefused(ApiError):
    """The vendor answered a non-zero retCode other than 7 (not retried)."""


class ApiUnavailable(ApiError):
    """Every attempt failed with a retryable cause; ``cause`` describes the last one."""

    ret_code = _BUSY

    def __init__(self, message: str, *, cause: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.cause = cause


class ApiResponseInvalid(ApiError):
    """The answer is not a JSON object with a usable envelope, or not shaped as expected."""


class ApiSignatureInvalid(ApiResponseInvalid):
    """The answer's ``sign`` is wrong, or absent while ``response_signature="require"``."""

    ret_code = 6


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded answer: the vendor's status fields and the whole JSON object."""

    ret_code: int
    ret_msg: str
    response_id: str | None
    #: The decoded JSON object, envelope fields included.
    body: dict[str, Any] = field(repr=False, compare=False)
    #: The requestID of the attempt that got this answer.
    request_id: str = ""
    #: The local clock when that attempt was sent and when its answer arrived.
    sent_at: float = field(default=0.0, compare=False)
    received_at: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class Ping:
    """The vendor's clock: ``offset`` is its time minus ours, in seconds, good to ±0.5 s (its
    clock's resolution) plus half the round trip."""

    timestamp: int
    offset: float
    round_trip: float
    envelope: Envelope = field(repr=False)


class _Retry(Exception):
    """One attempt failed in a way worth another (internal)."""

    def __init__(self, cause: str, envelope: Envelope | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.envelope = envelope


class CallbotAPI:
    """A signed, retrying client of the vendor's API; one pooled HTTP connection per instance.

    Use it as a context manager, or call :meth:`close`.

    :param base_url: the API's location.
    :param uuid: the account uuid requests are signed with.
    :param secret_key: the key requests are signed with.
    :param algorithm: ``"MD5"`` or ``"SHA256"``, sent in the ``algorithm`` header.
    :param timeout: seconds per request.
    :param max_retries: retries of retCode 7, HTTP 5xx or 429, timeouts and connection errors,
        after ``backoff`` seconds doubling up to ``backoff_max``.
    :param response_signature: ``"verify-if-present"``, ``"require"`` or ``"off"``.
    :param transport: handed to httpx.
    :param clock: stamps ``createTs``; with ``sleep``, injectable for tests.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        uuid: str,
        secret_key: str,
        algorithm: str = "SHA256",
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        response_signature: ResponseSignature = "verify-if-present",
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not is_well_formed_uuid(uuid):
            raise ValueError("uuid must be 1-64 characters of A-Z a-z 0-9 _ -")
        if not secret_key:
            raise ValueError("secret_key must not be empty")
        if algorithm.upper() not in ALGORITHMS:
            raise ValueError("algorithm must be MD5 or SHA256")
        if response_signature not in _SIGNATURE_MODES:
            raise ValueError(f"response_signature must be one of {', '.join(_SIGNATURE_MODES)}")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or backoff_max < 0:
            raise ValueError("timeout must be positive; retries and backoff not negative")
        self.base_url = base_url.rstrip("/")
        self.uuid = uuid
        self._secret_key = secret_key
        self.algorithm = algorithm.upper()
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.response_signature = response_signature
        self._clock = clock
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    @classmethod
    def from_settings(cls, settings: ApiSettings, **options: Any) -> CallbotAPI:
        """The client an app's ``CALLBOT_API_*`` settings describe (``get_state(app).settings
        .api``); ``options`` add or override constructor arguments (``transport``, ``clock``)."""
        arguments: dict[str, Any] = {
            "uuid": settings.uuid,
            "secret_key": settings.secret_key,
            "algorithm": settings.algorithm,
            "timeout": settings.timeout,
            "max_retries": settings.max_retries,
            "response_signature": settings.response_signature,
        }
        return cls(settings.base_url, **{**arguments, **options})

    def __repr__(self) -> str:
        return (
            f"CallbotAPI(base_url={self.base_url!r}, uuid={self.uuid!r}, secret_key='***',"
            f" algorithm={self.algorithm!r})"
        )

    def __enter__(self) -> CallbotAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    # --- the endpoints -------------------------------------------------------------------

    def ping(self, data: str = "ping") -> Ping:
        """The vendor's current time, and how far our clock is from it."""
        path = API_PATH + "ping"
        envelope = self.call(path, {"data": data})
        timestamp = envelope.body.get("timestamp")
        if not _is_int(timestamp):
            raise ApiResponseInvalid(f"callbot API {path}: no integer timestamp", path=path)
        # The vendor's whole second stands for [timestamp, timestamp + 1): take its middle.
        midpoint = (envelope.sent_at + envelope.received_at) / 2
        return Ping(
            timestamp=timestamp,
            offset=timestamp + 0.5 - midpoint,
            round_trip=envelope.received_at - envelope.sent_at,
            envelope=envelope,
        )

    def list_tasks(
        self,
        user_task_ids: Iterable[str] | None = None,
        *,
        statuses: Iterable[int] | None = None,
        start_ts: int | None = None,
        end_ts: int | None = None,
        page_size: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Every listTask object matching the conditions (lazily, page after page).

        ``user_task_ids`` are asked :data:`TASK_IDS_PER_QUERY` at a time; ``start_ts`` and
        ``end_ts`` bound the tasks' creation time.
        """
        conditions: dict[str, Any] = {}
        if statuses is not None:
            conditions["taskStatus"] = [int(status) for status in statuses]
        if start_ts is not None:
            conditions["startTs"] = start_ts
        if end_ts is not None:
            conditions["endTs"] = end_ts
        id_groups: Iterable[list[str] | None] = (
            [None] if user_task_ids is None else _chunks(user_task_ids, TASK_IDS_PER_QUERY)
        )
        for ids in id_groups:
            query = conditions if ids is None else {**conditions, "userTaskID": ids}
            body = {"productID": "callbot", "queryConditions": query}
            yield from self._pages(API_PATH + "listTask", body, ("taskData",), page_size)

    def list_orders(
        self,
        user_task_id: str,
        *,
        order_ids: Iterable[str] | None = None,
        finish: bool | None = None,
        page_size: int = 100,
        **options: Any,
    ) -> Iterator[dict[str, Any]]:
        """Every listOrder object of one task (an order with its last call), page after page.

        ``options`` are passed as the vendor names them (``callStatus=[1]``, ``intentTag=[..]``).
        """
        query = dict(options)
        if order_ids is not None:
            query["orderID"] = _ids(order_ids)
        if finish is not None:
            query["finish"] = int(finish)
        body = {"userTaskID": user_task_id, "options": query}
        yield from self._pages(API_PATH + "listOrder", body, ORDER_LIST_KEYS, page_size)

    def list_order_details(
        self, user_task_id: str, order_ids: Iterable[str]
    ) -> Iterator[dict[str, Any]]:
        """The listOrderDetail object (with ``callInfoDetailList``) of each order found,
        asking :data:`ORDER_DETAIL_CHUNK` distinct order ids per call."""
        path = API_PATH + "listOrderDetail"
        for chunk in _chunks(order_ids, ORDER_DETAIL_CHUNK):
            envelope = self.call(path, {"userTaskID": user_task_id, "orderList": chunk})
            yield from _items(envelope, ("orderDetailList",), path)

    def manage_task(
        self,
        user_task_id: str,
        operation: TaskOperation | int,
        *,
        delete_undialed: bool = False,
    ) -> Envelope:
        """mgrTaskStatus: start, pause or complete a task; the answer adds ``taskID`` and
        ``taskStatus``. ``delete_undialed`` (delCall) drops the numbers not yet dialled."""
        body = {
            "productID": "callbot",
            "userTaskID": user_task_id,
            "taskOperate": int(TaskOperation(operation)),
            "delCall": int(delete_undialed),
        }
        return self.call(API_PATH + "mgrTaskStatus", body)

    def call(self, path: str, body: Mapping[str, Any]) -> Envelope:
        """POST ``body`` to ``path``, signed, retried; the decoded answer when retCode is 0."""
        content = serialize(body, "compact")
        attempt = 1
        while True:
            try:
                return self._attempt(path, content)
            except _Retry as retry:
                if attempt > self.max_retries:
                    envelope = retry.envelope
                    raise ApiUnavailable(
                        f"callbot API {path}: no success after {attempt} attempt(s);"
                        f" last: {retry.cause}",
                        path=path,
                        cause=retry.cause,
                        ret_msg=envelope.ret_msg if envelope else "",
                        response_id=envelope.response_id if envelope else None,
                    ) from retry.__cause__
                delay = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
                logger.warning(
                    "callbot API %s: attempt %d of %d failed (%s); retrying in %.2f s",
                    path,
                    attempt,
                    self.max_retries + 1,
                    retry.cause,
                    delay,
                )
            self._sleep(delay)
            attempt += 1

    # --- one attempt ---------------------------------------------------------------------

    def signed_headers(self, content: bytes, *, request_id: str, create_ts: str) -> dict[str, str]:
        """The request headers for ``content``: auth headers, ``algorithm``, content type."""
        headers = sign_headers(
            content,
            secret_key=self._secret_key,
            uuid=self.uuid,
            algorithm=self.algorithm,
            request_id=request_id,
            create_ts=create_ts,
            algorithm_header=True,
        )
        return {**headers, "Content-Type": "application/json"}

    def _attempt(self, path: str, content: bytes) -> Envelope:
        request_id = uuid_module.uuid4().hex
        sent_at = self._clock()
        headers = self.signed_headers(content, request_id=request_id, create_ts=str(int(sent_at)))
        try:
            response = self._http.post(path, content=content, headers=headers)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        received_at = self._clock()
        status = response.status_code
        if status >= 500 or status in _RETRY_STATUSES:
            raise _Retry(f"HTTP {status}")
        self._check_signature(path, response, request_id)
        try:
            payload = decode_body(response.content)
        except MalformedBody as exc:
            raise ApiResponseInvalid(
                f"callbot API {path} answered HTTP {status}: {exc.message}", path=path
            ) from None
        envelope = _envelope(path, payload, request_id, sent_at, received_at)
        if envelope.ret_code == _BUSY:
            raise _Retry(f"retCode 7 {envelope.ret_msg[:_MAX_MESSAGE]!r}", envelope)
        if envelope.ret_code != 0:
            raise ApiRefused(
                f"callbot API {path} answered retCode {envelope.ret_code}:"
                f" {envelope.ret_msg[:_MAX_MESSAGE]!r} (responseID {envelope.response_id})",
                path=path,
                ret_code=envelope.ret_code,
                ret_msg=envelope.ret_msg,
                response_id=envelope.response_id,
            )
        if not 200 <= status < 300:
            raise ApiResponseInvalid(
                f"callbot API {path} answered HTTP {status} with retCode 0", path=path
            )
        return envelope

    def _check_signature(self, path: str, response: httpx.Response, request_id: str) -> None:
        """Verify the answer's ``sign`` over its raw bytes, as the mode says (see the module)."""
        if self.response_signature == "off":
            return
        got = response.headers
        if "sign" not in got:
            if self.response_signature == "require":
                raise ApiSignatureInvalid(
                    f"callbot API {path} answered HTTP {response.status_code} unsigned", path=path
                )
            return
        for name, ours in (("requestID", request_id), ("uuid", self.uuid)):
            if got.get(name, ours) != ours:
                raise ApiSignatureInvalid(
                    f"callbot API {path}: the answer's {name} header does not echo the request",
                    path=path,
                )
        claimed = {"requestID": request_id, "uuid": self.uuid}
        claimed.update(
            (name, got[name]) for name in ("createTs", "sign", "algorithm") if name in got
        )
        try:
            auth = parse_auth_headers(claimed)
            verify_signature(
                auth, response.content, secret_keys=[self._secret_key], algorithms=tuple(ALGORITHMS)
            )
        except RequestRejected as exc:
            raise ApiSignatureInvalid(
                f"callbot API {path}: the answer's signature is refused: {exc.message}", path=path
            ) from None

    def _pages(
        self, path: str, body: Mapping[str, Any], keys: Sequence[str], page_size: int
    ) -> Iterator[dict[str, Any]]:
        """Ask page 1, 2, ... until a page is shorter than ``page_size``."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        previous: list[dict[str, Any]] | None = None
        page = 1
        while True:
            envelope = self.call(path, {**body, "page": page, "size": page_size})
            items = _items(envelope, keys, path)
            if items and items == previous:
                raise ApiResponseInvalid(
                    f"callbot API {path} answered page {page} as page {page - 1}: no paging",
                    path=path,
                )
            yield from items
            if len(items) < page_size:
                return
            previous = items
            page += 1


def _envelope(
    path: str, payload: dict[str, Any], request_id: str, sent_at: float, received_at: float
) -> Envelope:
    """Read retCode/retMsg/responseID (ping: code/msg/reqId) from a decoded answer."""
    for code_key, msg_key, id_key in (
        ("retCode", "retMsg", "responseID"),
        ("code", "msg", "reqId"),
    ):
        if code_key in payload:
            code, message, response_id = (
                payload[code_key],
                payload.get(msg_key),
                payload.get(id_key),
            )
            if _is_int(code) and isinstance(message, str | None):
                return Envelope(
                    ret_code=code,
                    ret_msg=message or "",
                    response_id=response_id if isinstance(response_id, str) else None,
                    body=payload,
                    request_id=request_id,
                    sent_at=sent_at,
                    received_at=received_at,
                )
            break
    raise ApiResponseInvalid(f"callbot API {path} answered without a usable retCode", path=path)


def _items(envelope: Envelope, keys: Sequence[str], path: str) -> list[dict[str, Any]]:
    """The objects listed under the first of ``keys`` present (``null`` is an empty list).

    A key holding an object is a wrapper (``{"data": {"list": [...]}}``): its list is read from
    the same keys or ``list``.
    """
    body = envelope.body
    for key in keys:
        value = body.get(key)
        if isinstance(value, dict):
            inner = [name for name in (*keys, "list") if name in value]
            if not inner:
                continue
            key, value = f"{key}.{inner[0]}", value[inner[0]]
        elif key not in body:
            continue
        if value is None:
            return []
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            return value
        raise ApiResponseInvalid(f"callbot API {path}: {key} is not a list of objects", path=path)
    raise ApiResponseInvalid(
        f"callbot API {path} answered no {' or '.join(keys)} (keys: {', '.join(sorted(body))})",
        path=path,
    )


def _ids(values: Iterable[str]) -> list[str]:
    if isinstance(values, str):  # one id where a list was meant would split into letters
        raise TypeError("give a list of ids, not one string")
    return list(values)


def _chunks(values: Iterable[str], size: int) -> list[list[str]]:
    """The distinct ids, in order, in lists of at most ``size``."""
    ids = list(dict.fromkeys(_ids(values)))
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
