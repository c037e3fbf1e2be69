"""AAMI config-server: a Flask app serving agents and operators (``create_app``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from server import db, extensions
from server.settings import Settings, load_settings


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Defaults, then ``AAMI_*`` environment, then ``config`` (tests pass overrides here)."""
    settings = load_settings(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.MAX_CONTENT_LENGTH
    app.json.sort_keys = False  # type: ignore[attr-defined]
    init_extensions(app, settings)
    register_blueprints(app)
    return app


def init_extensions(app: Flask, settings: Settings) -> None:
    from server.jobs import context
    from server.jobs.queues import JobQueues
    from server.jobs.sinks import make_sinks
    from server.redis_conn import connect
    from server.services import policy
    from server.services.certificates import AuthorityCache
    from server.services.notify import ChangeNotifier

    database = db.Database(settings.database_url())
    db.init_app(app, database)
    client = connect(settings.REDIS_URL, settings.DATA_DIR)
    app.extensions[extensions.SETTINGS] = settings
    app.extensions[extensions.REDIS] = client
    app.extensions[extensions.NOTIFIER] = ChangeNotifier(client)
    app.extensions[extensions.QUEUES] = JobQueues(client, inline=settings.embedded)
    from server import metrics

    metrics.init_app(app, database, client)
    # Jobs run inline here when embedded: they use this app's database, Redis and
    # event sinks (RQ jobs, or the embedded server's background delivery thread).
    event_sinks = make_sinks(settings, client)
    app.extensions[extensions.EVENT_SINKS] = event_sinks
    context.configure(settings, database, client, event_sinks)
    policy.install()
    app.extensions[extensions.POLICY_KEY] = _policy_key(settings)
    # Loaded on first use, so 'aami-server ca init' on a running server needs no restart.
    app.extensions[extensions.AUTHORITY] = AuthorityCache(settings.ca_dir())
    from server.api import admission

    app.extensions[admission.EXTENSION_KEY] = admission.Admission(
        settings.MAX_ACTIVE_REQUESTS,
        {admission.REGISTRATION: settings.MAX_ACTIVE_REGISTRATIONS},
        wait=settings.ADMISSION_WAIT_MS / 1000,
    )


def _policy_key(settings: Settings) -> Any:
    """The check-policy signing key: the configured file, or one the embedded server
    makes for itself. A production server without one sends unsigned policies, which
    agents that pin policy keys refuse."""
    import logging

    from server.errors import SettingsError
    from server.security import policy as policy_keys

    path = settings.policy_key_path()
    try:
        if settings.POLICY_KEY_FILE or path.exists():
            return policy_keys.load_policy_key(path)
        if settings.embedded:
            return policy_keys.create_policy_key(path)
    except policy_keys.PolicyKeyError as exc:
        raise SettingsError(f"AAMI_POLICY_KEY_FILE: {exc}") from None
    logging.getLogger(__name__).warning(
        "no AAMI_POLICY_KEY_FILE: check policies are sent unsigned "
        "(create a key with 'aami-server policy-key create')"
    )
    return None


def register_blueprints(app: Flask) -> None:
    from server.api import (
        agents,
        audit,
        bootstrap_tokens,
        certificates,
        checks,
        commands,
        dead_letters,
        events,
        groups,
        health,
        jobs,
        openapi,
        registration,
        results,
        targets,
    )
    from server.api.error_handlers import register_error_handlers

    for module in (
        health,
        registration,
        agents,
        certificates,
        results,
        checks,
        targets,
        groups,
        bootstrap_tokens,
        events,
        jobs,
        commands,
        dead_letters,
        audit,
        openapi,
    ):
        app.register_blueprint(module.bp)
    register_error_handlers(app)

    from server import ui

    ui.init_app(app)  # the status pages under /ui (their own HTML error pages)
