"""The store failing for real under a request: a full disk (SQLite on a 2 MB tmpfs) and a cut
connection (PostgreSQL behind a TCP relay that is cut).

The receivers ran, but the outcome could not be written: the outcome is kept, written as soon
as the store takes writes again, and before a redelivery could run the receivers a second time;
a process that dies owing it leaves the delivery abandoned, which is counted, listed, reported
and replayed. And SQLite recovers by itself once the disk has room again.
"""

from __future__ import annotations

import errno
import gc
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_callbot import DeliveryState, create_blueprint, get_store, signals
from flask_callbot.metrics import metrics_view
from flask_callbot.state import get_state
from flask_callbot.testing import task_payload

from support import POSTGRES_URL, SECRET, UUID, Clock, CuttableLink, Sender, assert_reply
from support import postgres_schema as fresh_schema

LEASE = 60


def mount_small_disk(folder: Path) -> None:
    folder.mkdir()
    mounted = subprocess.run(  # noqa: S603 - fixed arguments
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a 2 MB tmpfs (needs root): {mounted.stderr.strip()}")


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "--lazy", str(folder)], check=False)  # noqa: S603, S607


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    with path.open("wb", buffering=0) as file:  # unbuffered: close() has nothing left to write
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


@dataclass
class Fault:
    """A store that a receiver can break for real, and the test repair."""

    url: str
    cause: Callable[[], None]
    repair: Callable[[], None]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fault]:
    """SQLite on a 2 MB file system that fills up, or PostgreSQL through a link that is cut."""
    if request.param == "sqlite":
        disk = tmp_path / "disk"
        mount_small_disk(disk)
        filler = disk / "filler"
        try:
            url = f"sqlite:///{disk / 'callbot.sqlite3'}"
            yield Fault(url, lambda: fill(filler), filler.unlink)
        finally:
            gc.collect()  # closes what the test's apps left open
            unmount(disk)
        return
    if not POSTGRES_URL:
        pytest.skip("set CALLBOT_TEST_POSTGRES_URL to run the PostgreSQL tests")
    with fresh_schema() as url:
        parsed = sa.make_url(url)
        link = CuttableLink(parsed.port or 5432)
        link.up()
        try:
            linked = parsed.set(port=link.port).render_as_string(hide_password=False)
            yield Fault(linked, link.down, link.up)
        finally:
            link.down()


def build(url: str, clock: Clock, instance: Path, **config: Any) -> Flask:
    app = Flask("callbot_faults", instance_path=str(instance))
    app.config.update(
        CALLBOT_SECRET_KEY=SECRET,
        CALLBOT_UUID=UUID,
        CALLBOT_DATABASE_URL=url,
        CALLBOT_PROCESSING_TIMEOUT=LEASE,
        **config,
    )
    app.register_blueprint(create_blueprint(clock=clock))
    return app


def with_receiver(app: Flask, fault: Fault, broken: set[str]) -> list[str]:
    """A receiver that breaks the store while it runs, once per delivery whose payload asks
    (``breakStore``; ``broken`` is shared by the test's apps), and raises if asked
    (``thenRaise``); returns the list of the deliveries it ran for."""
    runs: list[str] = []

    def receiver(sender: Flask, event: Any, **extra: Any) -> None:
        runs.append(event.request_id)
        if event.raw.get("breakStore") and event.request_id not in broken:
            broken.add(event.request_id)
            fault.cause()
        if event.raw.get("thenRaise"):
            raise RuntimeError("the CRM is down too")

    signals.callback_received.connect(receiver, app, weak=False)
    return runs


@pytest.fixture
def make(
    fault: Fault, clock: Clock, tmp_path: Path
) -> Iterator[Callable[..., tuple[Flask, list[str]]]]:
    """Apps on the faulty store, each with :func:`with_receiver`."""
    apps: list[Flask] = []
    broken: set[str] = set()

    def make_app(*, keep: bool = True, **config: Any) -> tuple[Flask, list[str]]:
        app = build(fault.url, clock, tmp_path / "instance", **config)
        runs = with_receiver(app, fault, broken)
        if keep:  # else the test lets it go, as a process that dies
            apps.append(app)
        return app, runs

    yield make_app
    for app in apps:
        get_state(app).store.dispose()


def scrape(app: Flask) -> dict[str, float]:
    with app.test_request_context():
        text = metrics_view().get_data(as_text=True)
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def cli(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["callbot", *args])


def test_an_unwritten_outcome_is_written_before_a_redelivery_runs_the_receivers(
    make: Callable[..., tuple[Flask, list[str]]],
    fault: Fault,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, runs = make(CALLBOT_METRICS=True)
    get_state(app).store.owed.interval = 3600  # only the redelivery may write it
    sender = Sender(app.test_client(), clock)
    payload = task_payload(taskStatus=2, breakStore=True)
    assert_reply(sender.post("task", payload, request_id="acked"), 200, 0)
    delivery = read_delivery(fault, "acked")
    assert (delivery.outcome, delivery.attempts) == ("pending", 1)
    assert "could not write the outcome of request_id=acked (processed)" in caplog.text
    assert scrape(app)["callbot_unwritten_outcomes"] == 1
    fault.repair()
    clock.now += LEASE + 1  # past the processing timeout: an abandoned delivery would rerun
    again = assert_reply(sender.post("task", payload, request_id="acked"), 200, 0)
    assert again["retMsg"] == "duplicate delivery: already processed"
    delivery = get_store(app).get_delivery("acked")
    assert (delivery.outcome, delivery.attempts, delivery.error) == ("processed", 1, None)
    assert runs == ["acked"]
    metrics = scrape(app)
    assert metrics["callbot_unwritten_outcomes"] == metrics["callbot_abandoned_deliveries"] == 0


def test_an_unwritten_failure_is_written_once_the_store_is_back(
    make: Callable[..., tuple[Flask, list[str]]], fault: Fault, clock: Clock
) -> None:
    app, runs = make()
    store = get_state(app).store
    store.owed.interval = 0.1
    sender = Sender(app.test_client(), clock)
    payload = task_payload(taskStatus=2, breakStore=True, thenRaise=True)
    assert_reply(sender.post("task", payload, request_id="failed"), 500, 5001)
    assert read_delivery(fault, "failed").outcome == "pending"
    assert len(store.owed) == 1
    fault.repair()
    deadline = time.monotonic() + 10
    while (delivery := get_store(app).get_delivery("failed")).outcome == "pending":
        assert time.monotonic() < deadline, "the owed outcome was never written"
        time.sleep(0.05)
    assert delivery.outcome == "failed"
    assert "the CRM is down too" in (delivery.error or "")
    assert len(store.owed) == 0
    result = cli(app, "replay", "--failed")
    assert "failed: failed: callback-received: RuntimeError: the CRM is down too" in result.output
    assert runs == ["failed", "failed"]


def test_a_process_that_died_owing_an_outcome_leaves_it_abandoned_and_replayable(
    make: Callable[..., tuple[Flask, list[str]]],
    fault: Fault,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_callbot")
    dying, dying_runs = make(keep=False)
    sender = Sender(dying.test_client(), clock)
    payload = task_payload(taskStatus=2, breakStore=True)
    assert_reply(sender.post("task", payload, request_id="orphan"), 200, 0)
    # The process dies owing the outcome: its memory (and the flush) are gone with it.
    get_state(dying).store.dispose()
    del dying, sender
    gc.collect()
    fault.repair()
    app, runs = make(CALLBOT_METRICS=True)  # the restarted process
    assert scrape(app)["callbot_abandoned_deliveries"] == 0  # within the lease: in progress
    assert "orphan" not in cli(app, "events", "--outcome", "abandoned").output
    clock.now += LEASE
    assert scrape(app)["callbot_abandoned_deliveries"] == 1
    listed = cli(app, "events", "--outcome", "abandoned").output
    assert "orphan" in listed and " abandoned " in listed
    assert "outcome:      abandoned" in cli(app, "show", "orphan").output
    doctor = cli(app, "doctor").output
    assert "WARN    deliveries: 0 failed, 1 abandoned (pending past" in doctor
    assert "1 abandoned deliveries: replay them" in cli(app, "prune", "--older-than", "0s").output
    replayed = cli(app, "replay", "--failed")
    assert replayed.exit_code == 0, replayed.output
    assert "orphan: processed" in replayed.output
    delivery = get_store(app).get_delivery("orphan")
    assert (delivery.outcome, delivery.attempts) == (DeliveryState.PROCESSED, 2)
    assert dying_runs + runs == ["orphan", "orphan"]  # at least once: the receivers ran again
    assert scrape(app)["callbot_abandoned_deliveries"] == 0
    assert "OK      deliveries: none failed or abandoned" in cli(app, "doctor").output


def read_delivery(fault: Fault, request_id: str) -> Any:
    """The row as the database has it, read around the fault (the store may be down)."""
    url = sa.make_url(fault.url)
    if url.get_backend_name() == "postgresql":
        url = sa.make_url(POSTGRES_URL or "").update_query_dict(dict(url.query))
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = "SELECT outcome, attempts FROM callbot_deliveries WHERE request_id = :r"
            return conn.execute(sa.text(query), {"r": request_id}).one()
    finally:
        engine.dispose()


# -- SQLite near a full disk --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    mount_small_disk(disk)
    try:
        yield disk
    finally:
        gc.collect()
        unmount(disk)


def test_sqlite_recovers_by_itself_once_the_disk_has_room_again(
    small_disk: Path, clock: Clock, tmp_path: Path
) -> None:
    app = build(f"sqlite:///{small_disk / 'callbot.sqlite3'}", clock, tmp_path / "instance")
    sender = Sender(app.test_client(), clock)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_000_000)
    try:
        posted = 0

        def post() -> int:
            nonlocal posted
            posted += 1
            payload = task_payload(taskID=f"T{posted % 50}", taskStatus=2)
            return int(sender.post("task", payload, request_id=f"r{posted}").status_code)

        while post() == 200:
            assert posted < 5000
        assert [post() for _ in range(20)] == [503] * 20  # full: nothing is acknowledged
        doctor = cli(app, "doctor").output
        assert "PROBLEM disk: " in doctor and "free in " + str(small_disk) in doctor
        filler.unlink()
        # Before: the WAL had eaten the freed space within ~30 writes, short of its automatic
        # checkpoint (4 MiB), and every write failed from then on.
        statuses = [post() for _ in range(300)]
        assert statuses == [200] * 300
        assert get_store(app).get_delivery(f"r{posted}").outcome == "processed"
    finally:
        get_state(app).store.dispose()
