"""One marshmallow schema per payload. They validate requests and feed the OpenAPI document."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    missing,
    validate,
    validates_schema,
)

from server.api.fields import SLUG, Duration, Labels, Name, Text
from server.security.ca import MAX_CSR_BYTES

MAX_TOKEN_LENGTH = 512
# The agent caps output at 16 KiB by default; leave room for a truncation marker.
MAX_OUTPUT_LENGTH = 65536
STATUSES = ("ok", "warning", "critical", "unknown")
# Integers stored in 32-bit columns (PostgreSQL INTEGER): larger ones are a 422, not a 500.
MAX_INT = 2**31 - 1


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class ErrorDetail(StrictSchema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    fields = fields.Dict()  # type: ignore[assignment]  # the error body's "fields" key


class ErrorReply(StrictSchema):
    error = fields.Nested(ErrorDetail, required=True)


# --- registration and agent tokens -------------------------------------------------------


class RegisterRequest(StrictSchema):
    token = Text(MAX_TOKEN_LENGTH, required=True)
    agent_id = fields.UUID(allow_none=True, load_default=None)
    hostname = Name(required=True)
    ip_address = Text(64, allow_none=True, load_default=None)
    group_id = Text(64, allow_none=True, load_default=None)
    labels = Labels(load_default=dict)
    metadata = fields.Dict(
        keys=Text(128), values=Text(1024), validate=validate.Length(max=64), load_default=dict
    )
    agent_version = Text(64, allow_none=True, load_default=None)
    refresh_token = Text(MAX_TOKEN_LENGTH, allow_none=True, load_default=None)
    registration_key = fields.String(
        validate=validate.Length(min=16, max=256),
        allow_none=True,
        load_default=None,
        metadata={"description": "a secret the agent keeps; proves the id on re-registration"},
    )
    csr = Text(
        MAX_CSR_BYTES,
        allow_none=True,
        load_default=None,
        metadata={"description": "PEM certificate signing request (ECDSA P-256) to enroll"},
    )


class TokenPair(StrictSchema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = fields.Integer(required=True)


class CertificateRequest(StrictSchema):
    csr = Text(
        MAX_CSR_BYTES,
        required=True,
        metadata={"description": "PEM certificate signing request (ECDSA P-256)"},
    )


class CertificateReply(StrictSchema):
    certificate = fields.String(required=True, metadata={"description": "PEM, CN = agent id"})
    ca_certificate = fields.String(required=True)
    certificate_expires_at = fields.DateTime(required=True)


class RegisterReply(TokenPair):
    agent_id = fields.String(required=True)
    heartbeat_interval = fields.Integer(required=True)
    # Present when the request carried a csr.
    certificate = fields.String()
    ca_certificate = fields.String()
    certificate_expires_at = fields.DateTime()


class RefreshRequest(StrictSchema):
    refresh_token = Text(MAX_TOKEN_LENGTH, required=True)


# --- heartbeat ---------------------------------------------------------------------------


class HeartbeatRequest(StrictSchema):
    version = Text(64, required=True)
    uptime_s = fields.Float(validate=validate.Range(min=0), load_default=None)
    spool_depth = fields.Integer(validate=validate.Range(min=0), load_default=None)
    dropped_results = fields.Integer(validate=validate.Range(min=0), load_default=None)
    running_checks = fields.Integer(validate=validate.Range(min=0), load_default=None)
    hostname = Text(255, load_default=None)
    policy_error = Text(1024, allow_none=True, load_default=None)


class AgentCommand(StrictSchema):
    id = fields.String(required=True)
    type = fields.String(required=True, metadata={"example": "run_check"})
    check_id = fields.String()


class HeartbeatReply(StrictSchema):
    config_version = fields.String(required=True)
    heartbeat_interval = fields.Integer(required=True)
    server_time = fields.DateTime(required=True)
    commands = fields.List(fields.Nested(AgentCommand), required=True)


# --- checks ------------------------------------------------------------------------------


class Limits(StrictSchema):
    cpu_seconds = fields.Integer(validate=validate.Range(min=1, max=86400), allow_none=True)
    memory_mb = fields.Integer(validate=validate.Range(min=8, max=1024 * 1024), allow_none=True)
    open_files = fields.Integer(validate=validate.Range(min=16, max=1 << 20), allow_none=True)
    file_size_mb = fields.Integer(validate=validate.Range(min=1, max=1 << 20), allow_none=True)
    processes = fields.Integer(validate=validate.Range(min=1, max=1 << 16), allow_none=True)


class Assignment(StrictSchema):
    target_ids = fields.List(fields.UUID(), validate=validate.Length(max=10000), load_default=list)
    group_ids = fields.List(Text(64), validate=validate.Length(max=1000), load_default=list)
    labels = Labels(load_default=dict)


class CheckCreate(StrictSchema):
    id = fields.String(required=True, validate=SLUG)
    name = Name(200, load_default=None)
    command = fields.List(
        Text(4096),
        required=True,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "argv; command[0] an absolute path (or one shell line)"},
    )
    shell = fields.Boolean(
        load_default=False,
        metadata={"description": "run command[0] with /bin/sh -c (agents must allow it)"},
    )
    interval = Duration(minimum=1, maximum=86400, load_default=60.0)
    timeout = Duration(minimum=0.1, maximum=3600, load_default=30.0)
    limits = fields.Nested(Limits, load_default=dict)
    env = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")),
        values=Text(1024),
        validate=validate.Length(max=32),
        load_default=dict,
    )
    enabled = fields.Boolean(load_default=True)
    maintenance = fields.Boolean(load_default=False)
    assign = fields.Nested(Assignment, load_default=dict)

    @validates_schema
    def _timeout_within_interval(self, data: dict[str, Any], **_: Any) -> None:
        if "timeout" in data and "interval" in data and data["timeout"] > data["interval"]:
            raise ValidationError("timeout must not exceed interval", "timeout")


class CheckUpdate(CheckCreate):
    """PATCH: every field optional, the id comes from the path.

    No field has a default either: only what was sent is loaded, so a default can neither
    overwrite a stored value nor fail the timeout/interval rule against one.
    """

    class Meta:
        unknown = RAISE
        exclude = ("id",)

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        field_obj.required = False
        field_obj.load_default = missing


class CheckReply(StrictSchema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    command = fields.List(fields.String(), required=True)
    interval = Duration(minimum=0, maximum=1e9, required=True)
    timeout = Duration(minimum=0, maximum=1e9, required=True)
    limits = fields.Dict(required=True)
    env = fields.Dict(required=True)
    shell = fields.Boolean()
    enabled = fields.Boolean()
    maintenance = fields.Boolean()
    assign = fields.Nested(Assignment)
    updated_at = fields.DateTime()


class PolicySignature(StrictSchema):
    algorithm = fields.String(required=True, metadata={"example": "ed25519"})
    key_id = fields.String(required=True)
    value = fields.String(required=True, metadata={"description": "base64 Ed25519 signature"})


class AgentChecksReply(StrictSchema):
    """The signed policy: ``signature`` covers the canonical JSON of target_id,
    config_version, checks, serial and issued_at."""

    target_id = fields.String(required=True)
    config_version = fields.String(required=True)
    checks = fields.List(fields.Nested(CheckReply), required=True)
    serial = fields.Integer(required=True, metadata={"description": "grows with every change"})
    issued_at = fields.String(required=True)
    signature = fields.Nested(PolicySignature)
    commands = fields.List(fields.Nested(AgentCommand), required=True)


class WaitQuery(StrictSchema):
    wait = fields.Float(validate=validate.Range(min=0, max=3600), load_default=0.0)


# --- targets and groups ------------------------------------------------------------------


class TargetCreate(StrictSchema):
    id = fields.UUID(load_default=None)
    hostname = Name(required=True)
    ip_address = Text(64, allow_none=True, load_default=None)
    group_id = Text(64, allow_none=True, load_default=None)
    labels = Labels(load_default=dict)


class TargetUpdate(StrictSchema):
    hostname = Name()
    group_id = Text(64, allow_none=True)
    labels = Labels()
    maintenance = fields.Boolean()


class TargetReply(StrictSchema):
    id = fields.String(required=True)
    hostname = fields.String(required=True)
    ip_address = fields.String(allow_none=True)
    group_id = fields.String(allow_none=True)
    labels = fields.Dict()
    metadata = fields.Dict()
    status = fields.String(
        required=True, metadata={"enum": ["pending", "online", "stale", "offline"]}
    )
    last_seen = fields.DateTime(allow_none=True)
    agent_version = fields.String(allow_none=True)
    maintenance = fields.Boolean()
    registered_at = fields.DateTime(allow_none=True)
    facts = fields.Dict()


class TargetListQuery(StrictSchema):
    status = fields.String(validate=validate.OneOf(["pending", "online", "stale", "offline"]))
    group_id = Text(64)
    hostname = Text(255)
    limit = fields.Integer(validate=validate.Range(min=1, max=10000), load_default=1000)
    offset = fields.Integer(validate=validate.Range(min=0, max=MAX_INT), load_default=0)


class CheckStateReply(StrictSchema):
    check_id = fields.String(required=True)
    status = fields.String(required=True)
    exit_code = fields.Integer(required=True)
    output = fields.String()
    perfdata = fields.List(fields.Dict())
    executed_at = fields.DateTime()
    since = fields.DateTime()
    occurrences = fields.Integer()
    flapping = fields.Boolean()


class ResultReply(StrictSchema):
    result_id = fields.String(required=True)
    check_id = fields.String(required=True)
    status = fields.String(required=True)
    exit_code = fields.Integer(required=True)
    output = fields.String()
    perfdata = fields.List(fields.Dict())
    duration_ms = fields.Integer()
    executed_at = fields.DateTime()
    received_at = fields.DateTime()


class ResultQuery(StrictSchema):
    check_id = Text(64)
    limit = fields.Integer(validate=validate.Range(min=1, max=1000), load_default=100)


class Perfdata(Schema):
    label = Text(256, required=True)
    value = fields.Float(allow_none=True, allow_nan=False)
    uom = Text(16, allow_none=True)
    warn = fields.Raw(allow_none=True)
    crit = fields.Raw(allow_none=True)
    min = fields.Float(allow_none=True, allow_nan=False)
    max = fields.Float(allow_none=True, allow_nan=False)


class AgentResult(StrictSchema):
    result_id = fields.UUID(required=True)
    check_id = fields.String(required=True, validate=SLUG)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    exit_code = fields.Integer(required=True, validate=validate.Range(min=-255, max=255))
    output = Text(MAX_OUTPUT_LENGTH, load_default="")
    perfdata = fields.List(
        fields.Nested(Perfdata), validate=validate.Length(max=100), load_default=list
    )
    duration_ms = fields.Integer(validate=validate.Range(min=0, max=MAX_INT), load_default=0)
    executed_at = fields.AwareDateTime(required=True, default_timezone=UTC)


class ResultBatch(StrictSchema):
    results = fields.List(
        fields.Nested(AgentResult), required=True, validate=validate.Length(min=1)
    )


class RejectedResult(StrictSchema):
    result_id = fields.String(required=True)
    reason = fields.String(required=True)


class ResultBatchReply(StrictSchema):
    job_id = fields.String(allow_none=True)
    accepted = fields.Integer(required=True)
    rejected = fields.List(fields.Nested(RejectedResult), required=True)


class GroupCreate(StrictSchema):
    id = fields.String(required=True, validate=SLUG)
    name = Name(200, load_default=None)
    description = Text(2000, load_default="")


class GroupReply(StrictSchema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    description = fields.String()


# --- bootstrap and admin tokens -------------------------------------------------------------


class BootstrapTokenCreate(StrictSchema):
    name = Name(200, required=True)
    group_id = Text(64, allow_none=True, load_default=None)
    labels = Labels(load_default=dict)
    max_uses = fields.Integer(
        validate=validate.Range(min=1, max=MAX_INT), allow_none=True, load_default=None
    )
    expires_in = Duration(minimum=60, maximum=10 * 365 * 86400, allow_none=True, load_default=None)
    agent_id = fields.UUID(allow_none=True, load_default=None)


class BootstrapTokenReply(StrictSchema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    prefix = fields.String(required=True)
    group_id = fields.String(allow_none=True)
    labels = fields.Dict()
    max_uses = fields.Integer(allow_none=True)
    uses = fields.Integer()
    agent_id = fields.String(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    token = fields.String(metadata={"description": "the secret; returned once, at creation"})


# --- events, jobs, commands --------------------------------------------------------------


class EventQuery(StrictSchema):
    target_id = Text(36)
    check_id = Text(64)
    kind = fields.String(validate=validate.OneOf(["target_status", "check_state", "flapping"]))
    since = fields.AwareDateTime(default_timezone=UTC)
    limit = fields.Integer(validate=validate.Range(min=1, max=1000), load_default=100)


class EventReply(StrictSchema):
    id = fields.Integer(required=True)
    kind = fields.String(required=True)
    target_id = fields.String(allow_none=True)
    check_id = fields.String(allow_none=True)
    previous = fields.String(allow_none=True)
    current = fields.String(required=True)
    message = fields.String()
    created_at = fields.DateTime(required=True)


class JobReply(StrictSchema):
    id = fields.String(required=True)
    status = fields.String(required=True)
    queue = fields.String(allow_none=True)
    enqueued_at = fields.DateTime(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)


class CommandReply(StrictSchema):
    id = fields.String(required=True)
    type = fields.String(required=True)
    check_id = fields.String()
    target_id = fields.String(required=True)


# --- audit log ---------------------------------------------------------------------------


class AuditQuery(StrictSchema):
    actor = Text(200)
    action = Text(64, metadata={"description": "exact, or a family with a trailing '.'"})
    subject = Text(200)
    since = fields.AwareDateTime(default_timezone=UTC)
    until = fields.AwareDateTime(default_timezone=UTC)
    before_id = fields.Integer(
        validate=validate.Range(min=1, max=2**63 - 1),
        metadata={"description": "page on: entries older than this id"},
    )
    limit = fields.Integer(validate=validate.Range(min=1, max=1000), load_default=100)


class AuditReply(StrictSchema):
    id = fields.Integer(required=True)
    actor = fields.String(required=True)
    action = fields.String(required=True)
    subject = fields.String(required=True)
    details = fields.Dict(required=True)
    created_at = fields.DateTime(required=True)
