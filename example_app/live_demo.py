"""Watch the dashboard fill up: the example app, fed simulated signed campaigns, in one command.

    python -m example_app.live_demo [--host 127.0.0.1] [--port 5000] [--orders 40]
        [--delay 0.15] [--campaigns N [--stay]] [--pause 3] [--no-faults] [--verbose] [--drop 0.3]

Starts the example app (SQLite in ``./instance`` unless ``CALLBOT_DATABASE_URL`` says otherwise;
the public dev credentials unless ``CALLBOT_SECRET_KEY`` and ``CALLBOT_UUID`` are set) on a
local werkzeug server, prints the dashboard's URL, then plays campaigns from
:mod:`flask_callbot.simulator` against it, a little apart so a person can watch. With
``--drop``, each campaign loses that share of its callbacks on the way, and reconciliation then
repairs the store through a fake of the vendor's API on loopback. Ctrl-C stops.
No vendor account and nothing but this package are needed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from typing import Any

from flask import Flask
from werkzeug.serving import make_server

from flask_callbot import simulator
from flask_callbot.simulator import Summary, Window, build_campaign, run_campaign

from . import create_app


class Server:
    """``app`` on a werkzeug server in a thread (a request per thread), as a context manager.

    Binding happens here, so a busy port fails at once (werkzeug says why and raises
    ``SystemExit``; other errors are ``OSError``); port 0 takes a free one.
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 5000) -> None:
        self._server = make_server(host, port, app, threaded=True)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="live-demo",
            daemon=True,
        )

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def demo_app(config: dict[str, Any] | None = None) -> Flask:
    """The example app, in dev mode unless real credentials are in the environment."""
    if not (os.environ.get("CALLBOT_SECRET_KEY") and os.environ.get("CALLBOT_UUID")):
        os.environ.setdefault("CALLBOT_EXAMPLE_DEV_MODE", "1")
    return create_app(config)


def play(
    app: Flask,
    base_url: str,
    *,
    orders: int = 40,
    delay: float = 0.15,
    faults: bool = True,
    drop: float = 0.0,
    seed: int | None = None,
) -> Summary:
    """One simulated campaign against ``base_url``, signed with ``app``'s own credentials.

    With ``faults``, a few duplicates and forgeries ride along: the receiver acknowledges the
    first without acting twice and refuses the second, and the dashboard counts both.
    ``drop`` is the share of callbacks lost on the way (see :func:`repair`).
    """
    config = app.config
    secret = config["CALLBOT_SECRET_KEY"]
    secret_key = secret if isinstance(secret, str) else secret[0]
    campaign = build_campaign(
        orders=orders,
        duplicates=0.03 if faults else 0.0,
        bad_signatures=0.02 if faults else 0.0,
        drop=drop,
        seed=seed,
        span=30,
        lines=4,
    )
    window = Window(
        max_age=int(config.get("CALLBOT_MAX_AGE", 300)),
        max_future_skew=int(config.get("CALLBOT_MAX_FUTURE_SKEW", 60)),
    )
    return run_campaign(
        campaign,
        base_url,
        secret_key=secret_key,
        uuid=config["CALLBOT_UUID"],
        window=window,
        concurrency=2,
        delay=delay,
    )


def repair(app: Flask, summary: Summary) -> str:
    """Reconcile what a lossy campaign left out, through a fake of the vendor's API; one line
    saying what was recorded and whether the store now matches the vendor."""
    report, left = simulator.repair(app, summary.campaign)
    lost = sum(delivery.lost for delivery in summary.campaign.deliveries)
    level = "the store matches the vendor" if not left and not report.errors else "STILL DIFFERS"
    return f"{lost} callbacks lost; reconciliation recorded {len(report.findings)}: {level}"


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README lists every option: a test holds it to that)."""
    parser = argparse.ArgumentParser(
        prog="python -m example_app.live_demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5000, help="port (0: any free one)")
    parser.add_argument("--orders", type=int, default=40, help="phone numbers per campaign")
    parser.add_argument("--delay", type=float, default=0.15, help="seconds between deliveries")
    parser.add_argument(
        "--campaigns", type=int, default=0, help="how many to play, then exit (0: until Ctrl-C)"
    )
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between campaigns")
    parser.add_argument("--no-faults", action="store_true", help="no duplicates or forgeries")
    parser.add_argument(
        "--drop",
        type=float,
        default=0.0,
        help="share of callbacks lost on the way, then repaired by reconciliation (e.g. 0.3)",
    )
    parser.add_argument(
        "--stay", action="store_true", help="keep the dashboard up after the last campaign"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request and callback")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    app = demo_app()
    if not args.verbose:  # the dashboard shows it all; keep the terminal readable
        for name in ("example_app", "flask_callbot", "werkzeug", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        server = Server(app, args.host, args.port)
    except (OSError, SystemExit) as error:  # werkzeug explains a busy port, then exits
        reason = "" if isinstance(error, SystemExit) else f": {error}"
        print(f"cannot listen on {args.host}:{args.port}{reason} (try --port)", file=sys.stderr)
        return 1
    with server:
        print(f"Dashboard: {server.url}/dashboard/  (Ctrl-C stops)", flush=True)
        try:
            played = 0
            while not args.campaigns or played < args.campaigns:
                if played:
                    time.sleep(args.pause)
                summary = play(
                    app,
                    server.url,
                    orders=args.orders,
                    delay=args.delay,
                    faults=not args.no_faults,
                    drop=args.drop,
                )
                played += 1
                verdict = "every answer as expected" if summary.ok else "UNEXPECTED answers"
                print(f"campaign {played}: {summary.report()[0]}; {verdict}", flush=True)
                if args.drop:
                    print(f"campaign {played}: {repair(app, summary)}", flush=True)
            if args.stay:
                print("campaigns done; the dashboard stays up until Ctrl-C", flush=True)
                threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
