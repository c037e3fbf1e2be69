"""Shared per-app objects, kept in ``app.extensions`` and reached through these accessors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from flask import current_app

from server.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from server.jobs.queues import JobQueues
    from server.jobs.sinks import EventSinks
    from server.services.certificates import AuthorityCache
    from server.services.notify import ChangeNotifier

SETTINGS = "aami.settings"
REDIS = "aami.redis"
NOTIFIER = "aami.notifier"
QUEUES = "aami.queues"
POLICY_KEY = "aami.policy_key"
AUTHORITY = "aami.certificate_authority"
EVENT_SINKS = "aami.event_sinks"


def settings() -> Settings:
    return current_app.extensions[SETTINGS]


def redis_client() -> redis.Redis:
    return current_app.extensions[REDIS]


def notifier() -> ChangeNotifier:
    return current_app.extensions[NOTIFIER]


def policy_key() -> Ed25519PrivateKey | None:
    return current_app.extensions[POLICY_KEY]


def job_queues() -> JobQueues:
    return current_app.extensions[QUEUES]


def certificate_authority() -> AuthorityCache:
    return current_app.extensions[AUTHORITY]


def event_sinks() -> EventSinks:
    return current_app.extensions[EVENT_SINKS]
