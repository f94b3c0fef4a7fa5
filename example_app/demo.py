"""Post one signed task callback to a running example app, as the vendor would.

    python -m example_app.demo [URL] [STATUS]

Uses the dev credentials (or CALLBOT_SECRET_KEY / CALLBOT_UUID from the environment) and prints
the receiver's reply.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

from flask_callbot.testing import sign_headers

from . import DEV_SECRET_KEY, DEV_UUID


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else "http://127.0.0.1:5000/api/v3/taskCallback"
    status = int(argv[2]) if len(argv) > 2 else 2
    payload = {
        "callbackType": 1,
        "userTaskID": "demo-campaign",
        "taskID": "demo-task-1",
        "sceneID": "demo-scene",
        "taskStatus": status,
        "createTs": int(time.time()) - 3600,
        "taskStat": {
            "finishOrderCount": 40,
            "totalOrderCount": 100,
            "finishRate": 0.4,
            "totalAnswerCall": 30,
            "totalCall": 60,
            "answerRate": 0.5,
        },
    }
    body = json.dumps(payload).encode()
    headers = sign_headers(
        body,
        secret_key=os.environ.get("CALLBOT_SECRET_KEY", DEV_SECRET_KEY),
        uuid=os.environ.get("CALLBOT_UUID", DEV_UUID),
    )
    headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            print(response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        print(error.code, error.read().decode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
