"""Post one signed task callback to a running example app, as the vendor would.

    python -m example_app.demo [URL] [STATUS]

Uses the dev credentials (or CALLBOT_SECRET_KEY / CALLBOT_UUID from the environment) and prints
the receiver's reply. ``flask callbot send`` does the same with every option; this is the
smallest complete example of signing exact bytes and posting them.
"""

from __future__ import annotations

import os
import sys
import time

from flask_callbot.testing import serialize, sign_headers, task_payload
from flask_callbot.wire import post_callback

from . import DEV_SECRET_KEY, DEV_UUID


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else "http://127.0.0.1:5000/api/v3/taskCallback"
    status = int(argv[2]) if len(argv) > 2 else 2
    payload = task_payload(
        userTaskID="demo-campaign",
        taskID="demo-task-1",
        sceneID="demo-scene",
        taskStatus=status,
        createTs=int(time.time()) - 3600,
    )
    body = serialize(payload, "python")
    headers = sign_headers(
        body,
        secret_key=os.environ.get("CALLBOT_SECRET_KEY", DEV_SECRET_KEY),
        uuid=os.environ.get("CALLBOT_UUID", DEV_UUID),
    )
    reply = post_callback(url, body, headers, timeout=10)
    print(f"{reply.status} retCode {reply.ret_code}: {reply.ret_msg}")
    return 0 if (reply.status, reply.ret_code) == (200, 0) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
