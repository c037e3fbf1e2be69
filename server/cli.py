"""``aami-server``: serve, worker, cron, db, token, admin-token, demo."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy.orm import Session

from server.errors import AamiError, SettingsError
from server.settings import Settings, load_settings


def _settings(*, signing_key: bool = True) -> Settings:
    try:
        return load_settings(signing_key=signing_key)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _admin_settings() -> Settings:
    """Settings for commands that sign no tokens: they make no secret key either."""
    return _settings(signing_key=False)


def prepare_embedded_database(settings: Settings) -> None:
    """The embedded SQLite schema is kept current automatically; PostgreSQL is migrated
    explicitly with ``aami-server db upgrade`` (one step of a deployment, not of every start)."""
    if settings.database_url().startswith("sqlite"):
        from server import migrate

        migrate.upgrade(settings.database_url())


@contextmanager
def _session() -> Iterator[Session]:
    from server.db import Database

    settings = _admin_settings()
    prepare_embedded_database(settings)
    database = Database(settings.database_url())
    try:
        with database.session() as session:
            yield session
    except AamiError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        database.engine.dispose()


def _parse_labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """AAMI config-server: registers agents, assigns checks, ingests results.

    Settings come from AAMI_* environment variables (see the README); with neither
    AAMI_DATABASE_URL nor AAMI_REDIS_URL set, everything runs embedded on a SQLite
    file under AAMI_DATA_DIR (default ./var).
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=int,
    help="Gunicorn processes (1 when embedded).",
)
@click.option(
    "--threads",
    default=32,
    show_default=True,
    type=int,
    help="Threads per process (gthread); long-polls park on them.",
)
@click.option(
    "--worker-class",
    type=click.Choice(["gthread", "gevent"]),
    default="gthread",
    show_default=True,
    help="gthread: a thread per request in progress. gevent: a greenlet per request, so "
    "one process can hold thousands of parked long-polls (needs the gevent package).",
)
@click.option(
    "--worker-connections",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most connections one gevent process holds at once (parked long-polls included).",
)
@click.option(
    "--certfile",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="TLS certificate (PEM) to serve HTTPS.",
)
@click.option(
    "--keyfile",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="TLS private key (PEM).",
)
@click.option(
    "--ca-certs",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="CA certificates (PEM) that client certificates are verified against "
    "[default with --client-certs: the built-in CA's ca.crt].",
)
@click.option(
    "--client-certs",
    type=click.Choice(["none", "optional", "required"]),
    default=None,
    help="Ask agents for a client certificate: 'optional' verifies one when sent (agents "
    "without one can still register and enroll), 'required' refuses the TLS handshake "
    "without one. [default: optional with --ca-certs, else none]",
)
def serve(
    host: str,
    port: int,
    workers: int,
    threads: int,
    worker_class: str,
    worker_connections: int,
    certfile: str | None,
    keyfile: str | None,
    ca_certs: str | None,
    client_certs: str | None,
) -> None:
    """Run the HTTP API under gunicorn (HTTPS and client certificates with --certfile ...)."""
    from server.security.ca import CA_CERT_FILE
    from server.serving import run_gunicorn, tls_options, worker_options

    settings = _settings()
    try:
        worker_options(worker_class, worker_connections)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if client_certs is None:
        client_certs = "optional" if ca_certs else "none"
    if client_certs != "none" and ca_certs is None:
        built_in = settings.ca_dir() / CA_CERT_FILE
        if not built_in.exists():
            raise click.UsageError(
                f"--client-certs {client_certs} needs --ca-certs, and there is no built-in CA "
                f"at {built_in} (create one with 'aami-server ca init')"
            )
        ca_certs = str(built_in)
    try:
        tls_options(certfile, keyfile, ca_certs, client_certs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if settings.REQUIRE_CLIENT_CERT and client_certs == "none" and not settings.CLIENT_CERT_HEADER:
        click.echo(
            "warning: AAMI_REQUIRE_CLIENT_CERT is set but this server verifies no client "
            "certificates (no --client-certs, no AAMI_CLIENT_CERT_HEADER): "
            "every agent call will be refused",
            err=True,
        )
    prepare_embedded_database(settings)
    if settings.embedded and workers != 1:
        click.echo("embedded mode (no AAMI_REDIS_URL): serving with one process", err=True)
        workers = 1
    run_gunicorn(
        bind=f"{host}:{port}",
        workers=workers,
        threads=threads,
        worker_class=worker_class,
        worker_connections=worker_connections,
        certfile=certfile,
        keyfile=keyfile,
        ca_certs=ca_certs,
        client_certs=client_certs,
    )


@main.command()
@click.option(
    "--queues",
    default="ingest,events,maintenance",
    show_default=True,
    help="Comma-separated queues to take jobs from, in priority order.",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
@click.option(
    "--maintenance-interval",
    default=30,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seconds between registry clean-ups (retrying jobs of dead workers).",
)
def worker(queues: str, burst: bool, name: str | None, maintenance_interval: int) -> None:
    """Run an RQ worker for ingestion, event delivery and maintenance jobs."""
    from server.jobs.worker import run_worker

    settings = _settings()
    if settings.embedded:
        raise click.ClickException(
            "AAMI_REDIS_URL is not set: the embedded server runs its jobs itself, "
            "a separate worker is only for deployments with Redis"
        )
    try:
        run_worker(
            settings,
            [q.strip() for q in queues.split(",") if q.strip()],
            burst=burst,
            name=name,
            maintenance_interval=maintenance_interval,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def cron() -> None:
    """Schedule the periodic jobs (stale sweeps, retention) with RQ's CronScheduler.

    Run one or two (for redundancy): the jobs are safe to run twice.
    """
    from server.jobs.cron import build_scheduler
    from server.logs import configure_logging
    from server.redis_conn import connect

    settings = _settings()
    if settings.embedded:
        raise click.ClickException(
            "AAMI_REDIS_URL is not set: the embedded server runs its periodic jobs itself"
        )
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    build_scheduler(settings, connect(settings.REDIS_URL, settings.DATA_DIR)).start()


@main.group()
def db() -> None:
    """Database schema migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from server import migrate

    settings = _admin_settings()
    migrate.upgrade(settings.database_url(), revision)
    click.echo(f"database at revision {migrate.current(settings.database_url())}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' empties the schema)."""
    from server import migrate

    migrate.downgrade(_admin_settings().database_url(), revision)


@db.command("current")
def db_current() -> None:
    """Print the schema revision of the database."""
    from server import migrate

    revision = migrate.current(_admin_settings().database_url())
    click.echo(revision or "empty (run: aami-server db upgrade)")


@main.group()
def token() -> None:
    """Bootstrap tokens that agents register with."""


@token.command("create")
@click.option("--name", required=True, help="What the token is for, e.g. 'web fleet 2026-11'.")
@click.option("--group", "group_id", default=None, help="Group that registered targets join.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Label for registered targets (repeatable).",
)
@click.option(
    "--max-uses", type=click.IntRange(min=1), default=None, help="How many registrations it allows."
)
@click.option("--expires-in", default=None, metavar="DURATION", help="Lifetime, e.g. 24h or 30m.")
@click.option(
    "--agent-id",
    default=None,
    help="Bind the token to one agent id (re-registering a known agent).",
)
def token_create(
    name: str,
    group_id: str | None,
    labels: tuple[str, ...],
    max_uses: int | None,
    expires_in: str | None,
    agent_id: str | None,
) -> None:
    """Create a bootstrap token; its secret is printed once, alone on the last line."""
    from agent.durations import parse_duration
    from server.services import audit, tokens

    try:
        lifetime = parse_duration(expires_in) if expires_in else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires-in") from None
    with _session() as session:
        issued = tokens.create_bootstrap_token(
            session,
            name=name,
            group_id=group_id,
            labels=_parse_labels(labels),
            max_uses=max_uses,
            expires_in=lifetime,
            agent_id=agent_id,
        )
        row = issued.row
        audit.record(
            session,
            audit.cli_actor(),
            "bootstrap_token.create",
            row.id,
            {
                "name": row.name,
                "prefix": row.prefix,
                "group_id": row.group_id,
                "labels": row.labels,
                "max_uses": row.max_uses,
                "expires_at": row.expires_at,
                "agent_id": row.bound_agent_id,
            },
        )
        click.echo(f"created bootstrap token {row.id} ({row.prefix}...) '{row.name}'", err=True)
        click.echo(issued.secret)


@token.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
def token_list(include_revoked: bool) -> None:
    """List bootstrap tokens (secrets are never shown again)."""
    from server.services import tokens

    with _session() as session:
        rows = tokens.list_bootstrap_tokens(session, include_revoked)
        _print_table(
            ["id", "prefix", "name", "uses", "expires", "state"],
            [
                [
                    r.id,
                    r.prefix + "...",
                    r.name,
                    f"{r.uses}/{r.max_uses or '-'}",
                    r.expires_at.isoformat(timespec="minutes") if r.expires_at else "never",
                    "revoked" if r.revoked_at else "active",
                ]
                for r in rows
            ],
        )


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    """Revoke a bootstrap token by id or prefix; registered agents keep working."""
    from server.services import audit, tokens

    with _session() as session:
        row = tokens.revoke_bootstrap_token(session, token_id)
        audit.record(
            session,
            audit.cli_actor(),
            "bootstrap_token.revoke",
            row.id,
            {"name": row.name, "prefix": row.prefix},
        )
        click.echo(f"revoked bootstrap token {row.id} ({row.prefix}...)")


@main.group()
def agent() -> None:
    """Agent identities (docs/security.md)."""


@agent.command("reset")
@click.argument("agent_id")
def agent_reset(agent_id: str) -> None:
    """Forget which agent claimed AGENT_ID and revoke its credentials, so that a rebuilt
    host (which lost its registration key) can register under the id again with any
    bootstrap token. Prefer `token create --agent-id` when you can hand the host a token."""
    from server.services import audit, registration

    with _session() as session:
        target = registration.reset_claim(session, agent_id)
        audit.record(
            session, audit.cli_actor(), "agent.reset", target.id, {"hostname": target.hostname}
        )
        click.echo(
            f"reset agent {target.id} ({target.hostname}): its credentials are revoked and "
            "the next agent to register under this id claims it"
        )


@main.group("admin-token")
def admin_token() -> None:
    """Tokens for operators and scripts calling the admin API."""


@admin_token.command("create")
@click.option("--name", required=True, help="Who or what uses it.")
@click.option(
    "--role", type=click.Choice(["admin", "read-only"]), default="admin", show_default=True
)
def admin_token_create(name: str, role: str) -> None:
    """Create an admin token; its secret is printed once, alone on the last line."""
    from server.services import audit, tokens

    with _session() as session:
        issued = tokens.create_admin_token(session, name=name, role=role)
        audit.record(
            session,
            audit.cli_actor(),
            "admin_token.create",
            issued.row.id,
            {"name": name, "role": role, "prefix": issued.row.prefix},
        )
        click.echo(
            f"created {role} token {issued.row.id} ({issued.row.prefix}...) '{name}'", err=True
        )
        click.echo(issued.secret)


@admin_token.command("list")
def admin_token_list() -> None:
    """List admin tokens."""
    from server.services import tokens

    with _session() as session:
        _print_table(
            ["id", "prefix", "name", "role", "state"],
            [
                [r.id, r.prefix + "...", r.name, r.role, "revoked" if r.revoked_at else "active"]
                for r in tokens.list_admin_tokens(session)
            ],
        )


@admin_token.command("revoke")
@click.argument("token_id")
def admin_token_revoke(token_id: str) -> None:
    """Revoke an admin token by id or prefix."""
    from server.services import audit, tokens

    with _session() as session:
        row = tokens.revoke_admin_token(session, token_id)
        audit.record(
            session,
            audit.cli_actor(),
            "admin_token.revoke",
            row.id,
            {"name": row.name, "role": row.role, "prefix": row.prefix},
        )
        click.echo(f"revoked admin token {row.id} ({row.prefix}...)")


@main.group("dead-letter")
def dead_letter() -> None:
    """Result batches set aside because they could not be stored.

    A batch the database refuses (or that is not a batch at all) is set aside so that the
    others are stored; list them, look at one, queue one again once the cause is fixed
    (one that still fails is set aside again), or drop one for good.
    """


@dead_letter.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
def dead_letter_list(limit: int) -> None:
    """List set-aside batches, oldest first."""
    from server.jobs import dead_letters

    with _session() as session:
        _print_table(
            ["id", "set aside", "agent", "results", "error"],
            [
                [
                    letter.id,
                    letter.set_aside_at.isoformat(timespec="seconds"),
                    letter.agent_id or "-",
                    letter.results,
                    letter.error[:80],
                ]
                for letter in dead_letters.list_letters(session, limit=limit)
            ],
        )


@dead_letter.command("show")
@click.argument("letter_id")
def dead_letter_show(letter_id: str) -> None:
    """Print one set-aside batch: why it was set aside, then the batch as queued (JSON)."""
    import json

    from server.jobs import dead_letters

    with _session() as session:
        described = dead_letters.describe(
            dead_letters.get_letter(session, letter_id), with_batch=True
        )
    batch = described.pop("batch")
    for key, value in described.items():
        click.echo(f"{key}: {value}", err=True)
    try:
        click.echo(json.dumps(json.loads(batch), indent=2))
    except ValueError:
        click.echo(batch)


@dead_letter.command("replay")
@click.argument("letter_id")
def dead_letter_replay(letter_id: str) -> None:
    """Queue a set-aside batch for storing again (embedded: store it now)."""
    from server.db import Database
    from server.jobs import backlog, context
    from server.jobs.queues import JobQueues
    from server.redis_conn import connect

    settings = _admin_settings()
    prepare_embedded_database(settings)
    database = Database(settings.database_url())
    client = connect(settings.REDIS_URL, settings.DATA_DIR)
    # Embedded, the drain job runs here, in this process, against the same database.
    context.configure(settings, database, client)
    try:
        with database.session() as session:
            described, outcome = backlog.replay(
                session, JobQueues(client, inline=settings.embedded), letter_id
            )
    except AamiError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        database.engine.dispose()
    _audit_best_effort("dead_letter.replay", letter_id, {**described, "outcome": outcome})
    messages = {
        "stored": "stored",
        "set_aside": "could not be stored again: set aside again (see: aami-server "
        f"dead-letter show {letter_id})",
        "queued": "queued for the ingest workers",
    }
    click.echo(f"batch {letter_id} ({described['results']} results): {messages[outcome]}")
    if outcome == "set_aside":
        sys.exit(1)


@dead_letter.command("drop")
@click.argument("letter_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_letter_drop(letter_id: str, yes: bool) -> None:
    """Delete a set-aside batch for good: its results are never stored."""
    from server.jobs import dead_letters
    from server.services import audit

    with _session() as session:
        letter = dead_letters.get_letter(session, letter_id)
        if not yes:
            click.confirm(
                f"drop batch {letter_id} ({letter.results} results of agent "
                f"{letter.agent_id or '?'}) for good?",
                abort=True,
            )
        described = dead_letters.describe(dead_letters.drop(session, letter_id))
        audit.record(session, audit.cli_actor(), "dead_letter.drop", letter_id, described)
    click.echo(f"dropped batch {letter_id}")


@main.command()
@click.option(
    "--data-dir",
    default="./var/demo",
    show_default=True,
    type=click.Path(),
    help="Where the demo keeps its files.",
)
@click.option("--port", default=None, type=int, help="Server port (default: a free one).")
def demo(data_dir: str, port: int | None) -> None:
    """Run server, worker and an agent with sample checks; show live states. Ctrl-C stops."""
    from pathlib import Path

    from server.demo import run_demo

    sys.exit(run_demo(Path(data_dir), port))


@main.group()
def ca() -> None:
    """The built-in certificate authority for TLS and agent client certificates."""


@ca.command("init")
@click.option("--name", default="AAMI CA", show_default=True, help="The CA's common name.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(min=1))
def ca_init(name: str, days: int) -> None:
    """Create the CA in AAMI_CA_DIR (default AAMI_DATA_DIR/ca); prints the CA certificate path."""
    from server.security.ca import CA_CERT_FILE, CaError, init_ca

    directory = _admin_settings().ca_dir()
    try:
        authority = init_ca(directory, name=name, days=days)
    except CaError as exc:
        raise click.ClickException(str(exc)) from None
    _audit_best_effort(
        "ca.init",
        str(directory),
        {"name": name, "days": days, "fingerprint": _fingerprint(authority.certificate_pem)},
    )
    click.echo(
        f"CA created; give agents {directory / CA_CERT_FILE} as server.tls.ca_cert", err=True
    )
    click.echo(str(directory / CA_CERT_FILE))


@ca.command("issue-server")
@click.option("--host", "hosts", multiple=True, required=True, help="DNS name or IP (repeatable).")
@click.option(
    "--out-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to write server.crt and server.key.",
)
@click.option("--days", default=397, show_default=True, type=click.IntRange(min=1))
def ca_issue_server(hosts: tuple[str, ...], out_dir: str, days: int) -> None:
    """Issue the config-server's TLS certificate from the CA."""
    from pathlib import Path

    from server.security.ca import CaError, load_ca, serial_number, write_key_pair

    try:
        authority = load_ca(_admin_settings().ca_dir())
        key, certificate = authority.issue_server_certificate(list(hosts), days)
    except CaError as exc:
        raise click.ClickException(str(exc)) from None
    key_path, cert_path = write_key_pair(Path(out_dir), "server", key, certificate)
    _audit_best_effort(
        "certificate.issue",
        ",".join(hosts),
        {"kind": "server", "serial": serial_number(certificate.decode()), "days": days},
    )
    click.echo(f"wrote {key_path} (0600) and {cert_path}")


@ca.command("issue-agent")
@click.option("--agent-id", required=True, help="The agent's UUID (its /etc/aami/agent-id).")
@click.option(
    "--out-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to write agent.crt and agent.key.",
)
@click.option("--days", default=365, show_default=True, type=click.IntRange(min=1))
def ca_issue_agent(agent_id: str, out_dir: str, days: int) -> None:
    """Issue a client certificate for an agent (for operators who deliver certificates,
    e.g. with Ansible). Agents can instead enroll with a CSR at registration."""
    from pathlib import Path

    from server.security.ca import (
        CaError,
        load_ca,
        new_agent_key_pair,
        serial_number,
        write_key_pair,
    )

    try:
        key, certificate = new_agent_key_pair(load_ca(_admin_settings().ca_dir()), agent_id, days)
    except CaError as exc:
        raise click.ClickException(str(exc)) from None
    key_path, cert_path = write_key_pair(Path(out_dir), "agent", key, certificate)
    _audit_best_effort(
        "certificate.issue",
        agent_id,
        {"kind": "agent", "serial": serial_number(certificate.decode()), "days": days},
    )
    click.echo(f"wrote {key_path} (0600) and {cert_path}")


@main.group("policy-key")
def policy_key() -> None:
    """The Ed25519 key that signs the check policies agents receive."""


@policy_key.command("create")
def policy_key_create() -> None:
    """Create the key in AAMI_POLICY_KEY_FILE; prints the public key for agent configs."""
    from server.security.policy import PolicyKeyError, create_policy_key, public_key_text

    path = _admin_settings().policy_key_path()
    try:
        key = create_policy_key(path)
    except PolicyKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"created {path} (0600); add the next line to the agents' server.policy_keys", err=True
    )
    click.echo(public_key_text(key))


@policy_key.command("show")
def policy_key_show() -> None:
    """Print the public key (base64) that agents must trust."""
    from server.security.policy import PolicyKeyError, load_policy_key, public_key_text

    try:
        click.echo(public_key_text(load_policy_key(_admin_settings().policy_key_path())))
    except PolicyKeyError as exc:
        raise click.ClickException(str(exc)) from None


def _fingerprint(certificate_pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    return certificate.fingerprint(hashes.SHA256()).hex()


def _audit_best_effort(action: str, subject: str, details: dict[str, Any]) -> None:
    """Audit a change that lives in files, not the database: the files are written
    already, so an unreachable database costs the audit row (with a warning), not the work."""
    from server.services import audit

    try:
        with _session() as session:
            audit.record(session, audit.cli_actor(), action, subject, details)
    except Exception as exc:  # any database failure: say so, keep the exit status
        click.echo(f"warning: could not write the audit log entry ({action}): {exc}", err=True)


def _print_table(headers: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
