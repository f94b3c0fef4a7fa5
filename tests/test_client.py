"""The vendor API client against the loopback fake vendor, over real HTTP: signing, paging,
chunking, retries, typed errors, response signatures, and no secret anywhere it could leak."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from flask_callbot.client import (
    API_PATH,
    ApiError,
    ApiRefused,
    ApiResponseInvalid,
    ApiSignatureInvalid,
    ApiUnavailable,
    CallbotAPI,
    TaskOperation,
)
from flask_callbot.errors import CallbotError
from flask_callbot.signing import compute_signature
from flask_callbot.testing import call_payload, order_payload, task_payload
from flask_callbot.vendor_api import FakeVendor, ReceivedRequest, VendorBook, serve_vendor_api

from support import NOW, SECRET, UUID, Clock

TASK = "crm-campaign-42"
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def vendor() -> FakeVendor:
    return FakeVendor(uuid=UUID, secret_key=SECRET)


@pytest.fixture
def base_url(vendor: FakeVendor) -> Iterator[str]:
    with serve_vendor_api(vendor) as url:
        yield url


@pytest.fixture
def sleeps() -> list[float]:
    """The backoff delays the client asked for (it does not really sleep in these tests)."""
    return []


@pytest.fixture
def make_api(base_url: str, sleeps: list[float]) -> Iterator[Callable[..., CallbotAPI]]:
    made: list[CallbotAPI] = []

    def make(**options: Any) -> CallbotAPI:
        settings: dict[str, Any] = {"uuid": UUID, "secret_key": SECRET, "sleep": sleeps.append}
        settings["timeout"] = 5.0
        settings.update(options)
        api = CallbotAPI(settings.pop("base_url", base_url), **settings)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api: Callable[..., CallbotAPI]) -> CallbotAPI:
    return make_api()


def last(vendor: FakeVendor) -> ReceivedRequest:
    return vendor.requests[-1]


def add_orders(vendor: FakeVendor, count: int) -> list[str]:
    ids = [f"order-{number:05d}" for number in range(count)]
    for order_id in ids:
        vendor.book.record("order", order_payload(orderID=order_id))
    return ids


# --- signing and bytes ---------------------------------------------------------------------

SPACED = b'{"customerId": "1234", "appKey": "xxxxxx", "status": 1}'
COMPACT = b'{"customerId":"1234","appKey":"xxxxxx","status":1}'


@pytest.mark.parametrize(
    ("body", "algorithm", "expected"),
    [
        (SPACED, "MD5", "5D9DF0A715F076BD80045812AB251F08"),
        (SPACED, "SHA256", "07B49BD7AAA5DB7705A2B48D6024A00D9962FE643FC5379E1627D998A53A013A"),
        (COMPACT, "MD5", "803303CCA984889E9908BB7BE4B3B343"),
        (COMPACT, "SHA256", "87F0E7F6E1C4655CC8C7FFA3E043E16990F1E8850693A4372CFEB1D8755463CE"),
    ],
)
def test_request_signature_matches_the_vendor_vectors(
    make_api: Callable[..., CallbotAPI], body: bytes, algorithm: str, expected: str
) -> None:
    api = make_api(algorithm=algorithm.lower())
    headers = api.signed_headers(
        body, request_id="0123456789abcdef0123456789abcdef", create_ts="1700000000"
    )
    assert headers == {
        "requestID": "0123456789abcdef0123456789abcdef",
        "uuid": UUID,
        "createTs": "1700000000",
        "sign": expected,
        "algorithm": algorithm,
        "Content-Type": "application/json",
    }
    assert expected == compute_signature(
        SECRET,
        body,
        create_ts="1700000000",
        request_id="0123456789abcdef0123456789abcdef",
        uuid=UUID,
        algorithm=algorithm,
    )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA256"])
def test_the_bytes_sent_are_the_bytes_signed(
    make_api: Callable[..., CallbotAPI], vendor: FakeVendor, algorithm: str
) -> None:
    clock = Clock(NOW)
    api = make_api(algorithm=algorithm, clock=clock)
    vendor.clock = clock
    envelope = api.call(API_PATH + "ping", {"customerId": "1234", "appKey": "xxxxxx", "status": 1})
    assert envelope.ret_code == 0  # the vendor verified the sign over the bytes it received
    got = last(vendor)
    assert got.body == COMPACT  # serialised once, compact, exactly as the vendor vector
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["algorithm"] == algorithm
    assert got.headers["createTs"] == str(NOW)
    assert HEX32.fullmatch(got.headers["requestID"])
    assert got.headers["sign"] == compute_signature(
        SECRET,
        got.body,
        create_ts=got.headers["createTs"],
        request_id=got.headers["requestID"],
        uuid=UUID,
        algorithm=algorithm,
    )


def test_non_ascii_is_sent_as_raw_utf8_and_signed_as_sent(
    api: CallbotAPI, vendor: FakeVendor
) -> None:
    add_orders(vendor, 1)
    orders = list(api.list_orders(TASK, intentName=["有意向"], finish=True))
    assert [order["orderID"] for order in orders] == ["order-00000"]
    body = last(vendor).body
    assert "有意向".encode() in body
    assert b"\\u" not in body
    assert b" " not in body
    assert json.loads(body) == {
        "userTaskID": TASK,
        "options": {"intentName": ["有意向"], "finish": 1},
        "page": 1,
        "size": 100,
    }


def test_a_wrong_secret_or_account_is_refused_by_the_vendor(
    make_api: Callable[..., CallbotAPI], vendor: FakeVendor, sleeps: list[float]
) -> None:
    with pytest.raises(ApiRefused) as wrong_key:
        make_api(secret_key="not-the-secret").ping()
    assert wrong_key.value.ret_code == 6
    with pytest.raises(ApiRefused) as wrong_account:
        make_api(uuid="someone-else").ping()
    assert wrong_account.value.ret_code == 6002
    with pytest.raises(ApiRefused) as stale:  # our clock ten minutes behind the vendor's
        make_api(clock=lambda: time.time() - 600).ping()
    assert stale.value.ret_code == 6
    assert vendor.calls["ping"] == 3
    assert sleeps == []


# --- listing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("tasks", "calls"), [(250, 3), (200, 3), (99, 1), (0, 1)])
def test_list_tasks_reads_every_page(
    api: CallbotAPI, vendor: FakeVendor, tasks: int, calls: int
) -> None:
    for number in range(tasks):
        vendor.book.record("task", task_payload(userTaskID=f"t{number}", taskStatus=2))
    got = list(api.list_tasks(statuses=[2]))
    assert [task["userTaskID"] for task in got] == [f"t{number}" for number in range(tasks)]
    assert vendor.calls["listTask"] == calls
    pages = [json.loads(request.body) for request in vendor.requests]
    assert [(page["page"], page["size"]) for page in pages] == [
        (number, 100) for number in range(1, calls + 1)
    ]
    assert pages[0]["productID"] == "callbot"
    assert pages[0]["queryConditions"] == {"taskStatus": [2]}


def test_list_tasks_by_user_task_id_and_creation_time(api: CallbotAPI, vendor: FakeVendor) -> None:
    for number in range(5):
        vendor.book.record("task", task_payload(userTaskID=f"t{number}", createTs=1000 + number))
    got = api.list_tasks(["t1", "t2", "t3", "missing"], start_ts=1002, end_ts=1004, page_size=2)
    assert [task["userTaskID"] for task in got] == ["t2", "t3"]
    query = json.loads(last(vendor).body)["queryConditions"]
    assert query == {"startTs": 1002, "endTs": 1004, "userTaskID": ["t1", "t2", "t3", "missing"]}


def test_list_tasks_asks_many_user_task_ids_in_groups(api: CallbotAPI, vendor: FakeVendor) -> None:
    ids = [f"t{number}" for number in range(250)]
    for user_task_id in ids[::2]:
        vendor.book.record("task", task_payload(userTaskID=user_task_id))
    got = [task["userTaskID"] for task in api.list_tasks(ids)]
    assert got == ids[::2]
    asked = [
        json.loads(request.body)["queryConditions"]["userTaskID"] for request in vendor.requests
    ]
    assert [len(group) for group in asked] == [100, 100, 50]


def test_one_id_where_a_list_is_meant_is_refused(api: CallbotAPI, vendor: FakeVendor) -> None:
    with pytest.raises(TypeError, match="not one string"):
        list(api.list_tasks(TASK))
    with pytest.raises(TypeError, match="not one string"):
        list(api.list_order_details(TASK, "order-0001"))
    with pytest.raises(TypeError, match="not one string"):
        list(api.list_orders(TASK, order_ids="order-0001"))
    assert not vendor.calls


def test_list_orders_pages_and_filters(api: CallbotAPI, vendor: FakeVendor) -> None:
    ids = add_orders(vendor, 7)
    vendor.book.record("order", order_payload(orderID="other-task", userTaskID="another"))
    got = list(api.list_orders(TASK, page_size=3))
    assert [order["orderID"] for order in got] == ids
    assert got[0]["callInfoDetail"]["callID"] == "call-0001"
    assert vendor.calls["listOrder"] == 3
    chosen = api.list_orders(TASK, order_ids=ids[:2], callStatus=[1])
    assert [order["orderID"] for order in chosen] == ids[:2]


def test_list_order_details_asks_500_orders_per_call(api: CallbotAPI, vendor: FakeVendor) -> None:
    ids = add_orders(vendor, 1_201)
    got = list(api.list_order_details(TASK, [*ids, ids[0]]))  # a repeated id is asked once
    assert [order["orderID"] for order in got] == ids
    assert got[0]["callInfoDetailList"][0]["callID"] == "call-0001"
    assert vendor.calls["listOrderDetail"] == 3
    asked = [json.loads(request.body) for request in vendor.requests]
    assert [len(body["orderList"]) for body in asked] == [500, 500, 201]
    assert {body["userTaskID"] for body in asked} == {TASK}
    assert [order_id for body in asked for order_id in body["orderList"]] == ids


def test_manage_task_changes_the_vendors_task(api: CallbotAPI, vendor: FakeVendor) -> None:
    vendor.book.record("task", task_payload(taskStatus=2))
    vendor.book.record_number(order_payload(orderID="dialled"))
    vendor.book.record_number(order_payload(orderID="undialled", callInfoDetail={}))
    envelope = api.manage_task(TASK, TaskOperation.PAUSE)
    assert (envelope.body["taskID"], envelope.body["taskStatus"]) == ("T100", 5)
    assert json.loads(last(vendor).body) == {
        "productID": "callbot",
        "userTaskID": TASK,
        "taskOperate": 2,
        "delCall": 0,
    }
    api.manage_task(TASK, 3, delete_undialed=True)
    task = vendor.book.task(TASK)
    assert task is not None
    assert task["taskStatus"] == 3
    assert [order["orderID"] for order in vendor.book.orders(TASK)] == ["dialled"]


def test_the_book_keeps_every_call_of_an_order_once() -> None:
    book = VendorBook()
    first = call_payload()
    first["callInfoDetail"]["callID"] = "c1"
    second = call_payload(finish=False)
    second["callInfoDetail"]["callID"] = "c2"
    book.record("call", first)
    book.record("call", second)
    book.record("call", first)  # delivered twice: still one c1, now the latest
    order = book.order(TASK, "order-0001")
    assert order is not None
    assert [call["callID"] for call in order["callInfoDetailList"]] == ["c2", "c1"]
    assert order["finish"] is True
    assert "callbackType" not in order
    assert "callInfoDetail" not in order
    order["userName"] = "changed"  # a copy: the book is unchanged
    assert book.orders()[0]["userName"] == "王小明"


# --- retries -------------------------------------------------------------------------------


def test_busy_is_retried_with_backoff_and_a_fresh_signature(
    api: CallbotAPI, vendor: FakeVendor, sleeps: list[float]
) -> None:
    vendor.book.record("task", task_payload())
    vendor.faults.busy = 2
    assert [task["userTaskID"] for task in api.list_tasks([TASK])] == [TASK]
    assert vendor.calls["listTask"] == 3
    assert [request.ret_code for request in vendor.requests] == [7, 7, 0]
    assert sleeps == [0.5, 1.0]
    sent = [request.headers for request in vendor.requests]
    assert len({headers["requestID"] for headers in sent}) == 3
    assert len({headers["sign"] for headers in sent}) == 3
    assert len({request.body for request in vendor.requests}) == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_http_errors_are_retried(
    api: CallbotAPI, vendor: FakeVendor, sleeps: list[float], status: int
) -> None:
    vendor.faults.http_status, vendor.faults.http_errors = status, 2
    assert api.ping().timestamp > 0
    assert vendor.calls["ping"] == 3
    assert [request.http_status for request in vendor.requests] == [status, status, 200]
    assert sleeps == [0.5, 1.0]


def test_a_slow_answer_past_the_timeout_is_retried(
    make_api: Callable[..., CallbotAPI], vendor: FakeVendor, sleeps: list[float]
) -> None:
    api = make_api(timeout=0.3)
    vendor.faults.slow, vendor.faults.delay = 1, 2.0
    started = time.monotonic()
    assert api.ping().envelope.ret_code == 0
    assert time.monotonic() - started < 1.5
    assert vendor.calls["ping"] == 2
    assert sleeps == [0.5]


def test_spent_retries_raise_unavailable_naming_the_last_cause(
    make_api: Callable[..., CallbotAPI],
    vendor: FakeVendor,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = make_api(max_retries=4, backoff=1.0, backoff_max=4.0)
    vendor.faults.busy = 10
    with caplog.at_level(logging.WARNING, "flask_callbot"), pytest.raises(ApiUnavailable) as busy:
        api.ping()
    assert vendor.calls["ping"] == 5
    assert sleeps == [1.0, 2.0, 4.0, 4.0]
    error = busy.value
    assert (error.ret_code, error.ret_msg, error.path) == (7, "system busy", API_PATH + "ping")
    assert error.response_id is not None
    assert HEX32.fullmatch(error.response_id)
    assert "retCode 7" in error.cause
    assert "after 5 attempt(s)" in str(error)
    assert "retCode 7" in str(error)
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 4

    vendor.faults.busy, vendor.faults.http_errors = 0, 10
    with pytest.raises(ApiUnavailable, match="last: HTTP 503") as http:
        api.ping()
    assert http.value.cause == "HTTP 503"
    assert http.value.response_id is None


def test_no_connection_raises_unavailable_with_the_transport_error(
    make_api: Callable[..., CallbotAPI], sleeps: list[float]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = make_api(base_url=f"http://127.0.0.1:{port}", max_retries=2)
    with pytest.raises(ApiUnavailable, match="ConnectError") as error:
        api.ping()
    assert isinstance(error.value.__cause__, httpx.ConnectError)
    assert sleeps == [0.5, 1.0]


def test_other_ret_codes_raise_at_once_with_the_vendors_answer(
    api: CallbotAPI, vendor: FakeVendor, sleeps: list[float]
) -> None:
    with pytest.raises(ApiRefused) as unknown_task:
        api.manage_task("no-such-task", TaskOperation.START)
    error = unknown_task.value
    assert isinstance(error, ApiError)
    assert not isinstance(error, CallbotError)  # those are the receiver's answers
    assert error.ret_code == 4
    assert error.ret_msg == "userTaskID: no such task"
    assert error.response_id is not None
    assert HEX32.fullmatch(error.response_id)
    assert error.response_id in str(error)
    assert vendor.calls["mgrTaskStatus"] == 1

    too_many = {"userTaskID": TASK, "orderList": [str(number) for number in range(501)]}
    with pytest.raises(ApiRefused) as over_limit:
        api.call(API_PATH + "listOrderDetail", too_many)
    assert over_limit.value.ret_code == 4
    with pytest.raises(ApiRefused) as missing:
        api.call(API_PATH + "listOrder", {"page": 1, "size": 10})
    assert (missing.value.ret_code, missing.value.ret_msg) == (2, "missing field(s): userTaskID")
    assert sleeps == []


# --- response signatures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fault", "refused"),
    [
        ("verify-if-present", "forged", True),
        ("verify-if-present", "unsigned", False),
        ("require", "forged", True),
        ("require", "unsigned", True),
        ("off", "forged", False),
        ("off", "unsigned", False),
    ],
)
def test_response_signature_modes(
    make_api: Callable[..., CallbotAPI],
    vendor: FakeVendor,
    sleeps: list[float],
    mode: str,
    fault: str,
    refused: bool,
) -> None:
    api = make_api(response_signature=mode)
    assert api.ping().envelope.ret_code == 0  # a genuine signed answer passes every mode
    setattr(vendor.faults, fault, 1)
    if refused:
        with pytest.raises(ApiSignatureInvalid) as error:
            api.ping()
        assert error.value.ret_code == 6
        assert isinstance(error.value, ApiResponseInvalid)
    else:
        assert api.ping().envelope.ret_code == 0
    assert vendor.calls["ping"] == 2  # never retried
    assert sleeps == []


def test_an_unsigned_refusal_is_reported_unless_signatures_are_required(
    make_api: Callable[..., CallbotAPI],
) -> None:
    with pytest.raises(ApiRefused):
        make_api(secret_key="not-the-secret").ping()
    with pytest.raises(ApiSignatureInvalid, match="HTTP 401 unsigned"):
        make_api(secret_key="not-the-secret", response_signature="require").ping()


# --- answers the fake vendor never gives (httpx's MockTransport) ---------------------------


def _transport(answer: Callable[[httpx.Request], tuple[bytes, dict[str, str]]]) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        content, headers = answer(request)
        return httpx.Response(200, content=content, headers=headers)

    return httpx.MockTransport(handle)


def _signed(
    request: httpx.Request, payload: dict[str, Any], **override: str
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    headers = {
        "requestID": request.headers["requestID"],
        "uuid": UUID,
        "createTs": str(NOW),
        "algorithm": "MD5",
        **override,
    }
    headers["sign"] = compute_signature(
        SECRET,
        body,
        create_ts=headers["createTs"],
        request_id=headers["requestID"],
        uuid=headers["uuid"],
    )
    return body, headers


def test_a_signed_answer_must_echo_the_request_id(make_api: Callable[..., CallbotAPI]) -> None:
    ok = {"retCode": 0, "retMsg": "", "responseID": "r1", "taskData": []}
    api = make_api(transport=_transport(lambda request: _signed(request, ok)))
    assert list(api.list_tasks()) == []
    replayed = _transport(lambda request: _signed(request, ok, requestID="f" * 32))
    with pytest.raises(ApiSignatureInvalid, match="requestID header does not echo"):
        list(make_api(transport=replayed).list_tasks())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<html>bad gateway</html>", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"retMsg": "ok"}', "without a usable retCode"),
        (b'{"retCode": "0"}', "without a usable retCode"),
        (b'{"retCode": 0, "retMsg": "ok"}', "answered no taskData"),
        (b'{"retCode": 0, "taskData": {"a": 1}}', "answered no taskData"),
        (b'{"retCode": 0, "taskData": [1, 2]}', "taskData is not a list of objects"),
    ],
)
def test_odd_answers_are_invalid(
    make_api: Callable[..., CallbotAPI], content: bytes, message: str
) -> None:
    api = make_api(transport=_transport(lambda request: (content, {})))
    with pytest.raises(ApiResponseInvalid, match=message):
        list(api.list_tasks())


@pytest.mark.parametrize(
    "shape",
    [
        {"orderList": [{"orderID": "a"}]},
        {"orderData": [{"orderID": "a"}]},
        {"data": [{"orderID": "a"}]},
        {"data": {"list": [{"orderID": "a"}], "total": 1}},
        {"data": {"orderList": [{"orderID": "a"}]}},
    ],
)
def test_list_orders_reads_the_likely_shapes(
    make_api: Callable[..., CallbotAPI], shape: dict[str, Any]
) -> None:
    answer = json.dumps({"retCode": 0, **shape}).encode()
    api = make_api(transport=_transport(lambda request: (answer, {})))
    assert list(api.list_orders(TASK)) == [{"orderID": "a"}]
    empty = json.dumps({"retCode": 0, "orderList": None}).encode()
    assert list(make_api(transport=_transport(lambda request: (empty, {}))).list_orders(TASK)) == []


def test_a_vendor_ignoring_page_does_not_loop_forever(
    make_api: Callable[..., CallbotAPI],
) -> None:
    page = json.dumps({"retCode": 0, "taskData": [{"userTaskID": "t"}]}).encode()
    api = make_api(transport=_transport(lambda request: (page, {})))
    with pytest.raises(ApiResponseInvalid, match="no paging"):
        list(api.list_tasks(page_size=1))


# --- the clock -----------------------------------------------------------------------------


def test_ping_measures_the_vendors_clock(
    make_api: Callable[..., CallbotAPI], vendor: FakeVendor
) -> None:
    vendor.clock = Clock(NOW + 42.7)
    ping = make_api(clock=Clock(NOW)).ping("hello")
    assert ping.timestamp == NOW + 42
    assert ping.offset == 42.5
    assert ping.round_trip == 0
    assert ping.envelope.body["data"] == "hello"
    assert json.loads(last(vendor).body) == {"data": "hello"}

    vendor.clock = time.time
    real = make_api().ping()
    assert abs(real.offset) <= 0.5 + real.round_trip
    assert real.round_trip > 0


# --- secrets -------------------------------------------------------------------------------


def test_secrets_never_show(
    make_api: Callable[..., CallbotAPI], vendor: FakeVendor, caplog: pytest.LogCaptureFixture
) -> None:
    api = make_api(max_retries=1)
    assert SECRET not in repr(api)
    assert SECRET not in str(api)
    assert "secret_key='***'" in repr(api)
    assert SECRET not in repr(vendor)
    errors: list[Exception] = []
    with caplog.at_level(logging.DEBUG):
        for fault in ("busy", "http_errors", "forged"):
            setattr(vendor.faults, fault, 2)
            with pytest.raises(ApiError) as error:
                api.ping()
            errors.append(error.value)
            setattr(vendor.faults, fault, 0)
        with pytest.raises(ApiError) as refused:
            make_api(secret_key=SECRET[::-1]).ping()
        errors.append(refused.value)
        with pytest.raises(ApiError) as refused:
            api.manage_task("no-such-task", TaskOperation.COMPLETE)
        errors.append(refused.value)
    assert [type(error) for error in errors] == [
        ApiUnavailable,
        ApiUnavailable,
        ApiSignatureInvalid,
        ApiRefused,
        ApiRefused,
    ]
    assert caplog.records  # the retries were logged, at least
    for error in errors:
        for shown in (str(error), repr(error), repr(error.args), repr(vars(error))):
            assert SECRET not in shown
            assert SECRET[::-1] not in shown
    assert SECRET not in caplog.text
    assert SECRET[::-1] not in caplog.text


def test_bad_settings_are_refused_without_echoing_the_secret() -> None:
    with pytest.raises(ValueError, match="algorithm") as error:
        CallbotAPI(uuid=UUID, secret_key=SECRET, algorithm="SHA1")
    assert SECRET not in str(error.value)
    with pytest.raises(ValueError, match="secret_key"):
        CallbotAPI(uuid=UUID, secret_key="")
    with pytest.raises(ValueError, match="uuid"):
        CallbotAPI(uuid="has spaces", secret_key=SECRET)
    with pytest.raises(ValueError, match="response_signature"):
        CallbotAPI(uuid=UUID, secret_key=SECRET, response_signature="maybe")  # type: ignore[arg-type]
