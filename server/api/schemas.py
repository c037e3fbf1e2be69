"""One marshmallow schema per payload. They validate requests and feed the OpenAPI document."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    missing,
    validate,
)

from server.api.fields import (
    SLUG,
    Duration,
    Flag,
    Labels,
    Name,
    Text,
    Timestamp,
    WholeNumber,
)
from server.api.storable import unstorable_reason
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
    expires_in = WholeNumber(required=True)


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
    heartbeat_interval = WholeNumber(required=True)
    policy_keys = fields.List(
        fields.String(),
        required=True,
        metadata={
            "description": "the public keys (base64 raw Ed25519) that sign this server's "
            "check policies; empty when it signs none. An agent without server.policy_keys "
            "pins them when it registered over verified TLS"
        },
    )
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
    spool_depth = WholeNumber(validate=validate.Range(min=0), load_default=None)
    dropped_results = WholeNumber(validate=validate.Range(min=0), load_default=None)
    running_checks = WholeNumber(validate=validate.Range(min=0), load_default=None)
    hostname = Text(255, load_default=None)
    policy_error = Text(1024, allow_none=True, load_default=None)
    instance_id = Text(
        64,
        allow_none=True,
        load_default=None,
        metadata={"description": "per-install id: two alternating ones mean a cloned agent"},
    )


class AgentCommand(StrictSchema):
    id = fields.String(required=True)
    type = fields.String(required=True, metadata={"example": "run_check"})
    check_id = fields.String()


class HeartbeatReply(StrictSchema):
    config_version = fields.String(required=True)
    heartbeat_interval = WholeNumber(required=True)
    server_time = fields.DateTime(required=True)
    commands = fields.List(fields.Nested(AgentCommand), required=True)


# --- checks ------------------------------------------------------------------------------


class Limits(StrictSchema):
    cpu_seconds = WholeNumber(validate=validate.Range(min=1, max=86400), allow_none=True)
    memory_mb = WholeNumber(validate=validate.Range(min=8, max=1024 * 1024), allow_none=True)
    open_files = WholeNumber(validate=validate.Range(min=16, max=1 << 20), allow_none=True)
    file_size_mb = WholeNumber(validate=validate.Range(min=1, max=1 << 20), allow_none=True)
    processes = WholeNumber(validate=validate.Range(min=1, max=1 << 16), allow_none=True)


class Assignment(StrictSchema):
    target_ids = fields.List(fields.UUID(), validate=validate.Length(max=10000), load_default=list)
    group_ids = fields.List(Text(64), validate=validate.Length(max=1000), load_default=list)
    labels = Labels(load_default=dict)


def _when_shell(shell: Any, command: dict[str, Any]) -> dict[str, Any]:
    return {
        "if": {"properties": {"shell": shell}, "required": ["shell"]},
        "then": {"properties": {"command": command}},
    }


_ONE_SHELL_LINE = {"maxItems": 1}
_ABSOLUTE_PLUGIN = {"prefixItems": [{"type": "string", "pattern": "^/"}]}


class CheckCreate(StrictSchema):
    # The command rule of server.services.checks.validate_command, for the OpenAPI document.
    openapi_rules: ClassVar[dict[str, Any]] = {
        "allOf": [
            _when_shell({"const": True}, _ONE_SHELL_LINE),
            {
                "if": {"properties": {"shell": {"const": True}}, "required": ["shell"]},
                "else": {"properties": {"command": _ABSOLUTE_PLUGIN}},
            },
        ]
    }
    id = fields.String(required=True, validate=SLUG)
    name = Name(200, load_default=None)
    command = fields.List(
        Text(4096),
        required=True,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "argv; command[0] an absolute path (or one shell line)"},
    )
    shell = Flag(
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
    enabled = Flag(load_default=True)
    maintenance = Flag(load_default=False)
    assign = fields.Nested(Assignment, load_default=dict)


class CheckUpdate(CheckCreate):
    """PATCH: every field optional, the id comes from the path.

    No field has a default either: only what was sent is loaded, so a default cannot
    overwrite a stored value.
    """

    # Only what the request says is stated: with shell or command left out, the stored one
    # decides (server.services.checks.update_check).
    openapi_rules: ClassVar[dict[str, Any]] = {
        "allOf": [
            _when_shell({"const": True}, _ONE_SHELL_LINE),
            _when_shell({"const": False}, _ABSOLUTE_PLUGIN),
        ]
    }

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
    shell = Flag()
    enabled = Flag()
    maintenance = Flag()
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
    serial = WholeNumber(required=True, metadata={"description": "grows with every change"})
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
    maintenance = Flag()


class TargetReply(StrictSchema):
    id = fields.String(required=True)
    hostname = fields.String(required=True)
    ip_address = fields.String(allow_none=True)
    group_id = fields.String(allow_none=True)
    labels = fields.Dict(
        metadata={"description": "every label: the agent's own, overridden by trusted ones"}
    )
    trusted_labels = fields.Dict(
        metadata={"description": "labels an operator or bootstrap token set (PATCH sets these)"}
    )
    agent_labels = fields.Dict(metadata={"description": "labels the agent declared itself"})
    group_from_agent = Flag(
        metadata={"description": "the group is one the agent asked for (not trusted)"}
    )
    metadata = fields.Dict()
    status = fields.String(
        required=True, metadata={"enum": ["pending", "online", "stale", "offline"]}
    )
    last_seen = fields.DateTime(allow_none=True)
    agent_version = fields.String(allow_none=True)
    maintenance = Flag()
    registered_at = fields.DateTime(allow_none=True)
    facts = fields.Dict()


class TargetListQuery(StrictSchema):
    status = fields.String(validate=validate.OneOf(["pending", "online", "stale", "offline"]))
    group_id = Text(64)
    hostname = Text(255)
    limit = WholeNumber(validate=validate.Range(min=1, max=10000), load_default=1000)
    offset = WholeNumber(validate=validate.Range(min=0, max=MAX_INT), load_default=0)


class CheckStateReply(StrictSchema):
    check_id = fields.String(required=True)
    status = fields.String(required=True)
    exit_code = WholeNumber(required=True)
    output = fields.String()
    perfdata = fields.List(fields.Dict())
    executed_at = fields.DateTime()
    since = fields.DateTime()
    occurrences = WholeNumber()
    flapping = Flag()


class ResultReply(StrictSchema):
    result_id = fields.String(required=True)
    check_id = fields.String(required=True)
    status = fields.String(required=True)
    exit_code = WholeNumber(required=True)
    output = fields.String()
    perfdata = fields.List(fields.Dict())
    duration_ms = WholeNumber()
    executed_at = fields.DateTime()
    received_at = fields.DateTime()
    agent_executed_at = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "the agent's own executed_at when its clock ran ahead of the "
            "server's by more than AAMI_RESULT_MAX_FUTURE_SKEW; executed_at is then the "
            "time the server received the result"
        },
    )


class ResultQuery(StrictSchema):
    check_id = Text(64)
    limit = WholeNumber(validate=validate.Range(min=1, max=1000), load_default=100)


def storable(text: str) -> None:
    """Refuse text no database stores (a lone surrogate, NUL), saying where it is."""
    reason = unstorable_reason(text)
    if reason is not None:
        raise ValidationError(reason)


def StorableText(max_length: int, **kwargs: Any) -> fields.String:  # noqa: N802
    return fields.String(validate=[validate.Length(max=max_length), storable], **kwargs)


MAX_THRESHOLD_LENGTH = 64


class Threshold(fields.Raw):
    """A Nagios warning or critical threshold: a finite number, or a range such as
    ``"10:20"`` or ``"@~:5"``. Anything else (an object, NaN) is refused here rather than
    failing in the database."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            allow_none=True,
            metadata={
                "oneOf": [
                    {"type": "number"},
                    {"type": "string", "maxLength": MAX_THRESHOLD_LENGTH},
                ],
                "nullable": True,
            },
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            if len(value) > MAX_THRESHOLD_LENGTH:
                raise ValidationError(f"longer than {MAX_THRESHOLD_LENGTH} characters")
            storable(value)
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not is_finite(value):
                raise ValidationError("must be a finite number")
            return value
        raise ValidationError("must be a number, a range string such as \"10:20\", or null")


def is_finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer too large for a float
        return False


class Perfdata(Schema):
    label = StorableText(256, required=True)
    value = fields.Float(allow_none=True, allow_nan=False)
    uom = StorableText(16, allow_none=True)
    warn = Threshold()
    crit = Threshold()
    min = fields.Float(allow_none=True, allow_nan=False)
    max = fields.Float(allow_none=True, allow_nan=False)


class AgentResult(StrictSchema):
    result_id = fields.UUID(required=True)
    check_id = fields.String(required=True, validate=SLUG)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    exit_code = WholeNumber(required=True, validate=validate.Range(min=-255, max=255))
    output = StorableText(MAX_OUTPUT_LENGTH, load_default="")
    perfdata = fields.List(
        fields.Nested(Perfdata), validate=validate.Length(max=100), load_default=list
    )
    duration_ms = WholeNumber(validate=validate.Range(min=0, max=MAX_INT), load_default=0)
    # UTC; a time past year 9999 once in UTC is a 422. How far from the server's clock it
    # may lie is not the schema's business: see server/jobs/clock_window.py.
    executed_at = Timestamp(required=True)


class ResultBatch(StrictSchema):
    results = fields.List(
        fields.Nested(AgentResult), required=True, validate=validate.Length(min=1)
    )


class RejectedResult(StrictSchema):
    result_id = fields.String(required=True)
    reason = fields.String(required=True)


class ResultBatchReply(StrictSchema):
    job_id = fields.String(allow_none=True)
    accepted = WholeNumber(required=True)
    rejected = fields.List(fields.Nested(RejectedResult), required=True)


class DeadLetterQuery(StrictSchema):
    limit = WholeNumber(validate=validate.Range(min=1, max=1000), load_default=100)
    offset = WholeNumber(validate=validate.Range(min=0, max=MAX_INT), load_default=0)


class DeadLetterReply(StrictSchema):
    id = fields.String(required=True)
    agent_id = fields.String(allow_none=True)
    results = WholeNumber(required=True, metadata={"description": "results in the batch"})
    error = fields.String(required=True, metadata={"description": "why it could not be stored"})
    set_aside_at = fields.DateTime(required=True)
    batch = fields.String(
        metadata={"description": "the batch exactly as it was queued (JSON text); single "
                  "batch only"}
    )


class DeadLetterReplayReply(StrictSchema):
    dead_letter = fields.Nested(DeadLetterReply, required=True)
    outcome = fields.String(
        required=True,
        metadata={
            "enum": ["stored", "set_aside", "queued"],
            "description": "stored, or set aside again (the embedded server stores at once), "
            "or queued for a worker",
        },
    )


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
    max_uses = WholeNumber(
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
    max_uses = WholeNumber(allow_none=True)
    uses = WholeNumber()
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
    since = Timestamp()
    limit = WholeNumber(validate=validate.Range(min=1, max=1000), load_default=100)


class EventReply(StrictSchema):
    id = WholeNumber(required=True)
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
    since = Timestamp()
    until = Timestamp()
    before_id = WholeNumber(
        validate=validate.Range(min=1, max=2**63 - 1),
        metadata={"description": "page on: entries older than this id"},
    )
    limit = WholeNumber(validate=validate.Range(min=1, max=1000), load_default=100)


class AuditReply(StrictSchema):
    id = WholeNumber(required=True)
    actor = fields.String(required=True)
    action = fields.String(required=True)
    subject = fields.String(required=True)
    details = fields.Dict(required=True)
    created_at = fields.DateTime(required=True)
