"""The Celery worker's side of the served test app: ``celery -A served_celery worker``."""

from __future__ import annotations

from served_app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
