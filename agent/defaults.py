"""Documented defaults of the agent, in one place (values in seconds unless named)."""

from __future__ import annotations

CONFIG_PATH = "/etc/aami/agent.yaml"
ID_FILE = "/etc/aami/agent-id"
STATE_DIR = "/var/lib/aami"
ALLOWED_PATHS = ("/usr/lib/nagios/plugins", "/etc/aami/checks")

HEARTBEAT_INTERVAL = 30.0
HEARTBEAT_TIMEOUT = 10.0
# The server may ask for a different heartbeat interval; never beat faster than this.
MIN_HEARTBEAT_INTERVAL = 1.0

CHECK_TIMEOUT = 30.0
MAX_CONCURRENT = 10
RESULT_BUFFER_SIZE = 1000
OUTPUT_LIMIT_BYTES = 16384

RESULT_BATCH_SIZE = 100
MAX_RESULT_BATCH_SIZE = 500  # the server refuses bigger batches
FLUSH_INTERVAL = 2.0

# Long-poll for the check assignment: the server holds the request up to this long. Just
# under the server's cap (AAMI_LONGPOLL_MAX_WAIT, 60 s) and the 60 s idle timeout common
# to proxies and load balancers; a fleet's polls are a large share of its calls, so the
# longer the wait, the fewer calls a server answers for nothing.
LONG_POLL_WAIT = 55.0
# After a long-poll that returned early with "not modified", pause before polling again:
# the server wakes waiters when a command is queued, and that command is collected by the
# heartbeat, so polling again at once would only spin until the heartbeat has run.
LONG_POLL_EARLY_PAUSE = 2.0

# Refresh the access token this long before its ``exp``.
TOKEN_REFRESH_MARGIN = 60.0

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
# Registration refused by the server needs an operator: retry, but slowly.
REGISTRATION_BACKOFF_CAP = 300.0

SHUTDOWN_GRACE = 10.0
# On shutdown, how long to try to hand the spooled results to the server.
SHUTDOWN_FLUSH_TIMEOUT = 5.0

STATUS_INTERVAL = 5.0

CREDENTIALS_FILE = "credentials.json"
REGISTRATION_KEY_FILE = "registration.key"
# A random per-install id; with the machine id it tells clones of one agent id apart.
INSTANCE_ID_FILE = "instance.id"
ASSIGNMENT_FILE = "assignment.json"
SPOOL_FILE = "spool.db"
STATUS_FILE = "status.json"
# The server's policy keys, pinned at registration over verified TLS (agent/policy_pin.py).
POLICY_PIN_FILE = "policy-keys.json"
# Written by certificate enrollment (server.tls.enroll) unless the config names paths.
CLIENT_CERT_FILE = "agent.crt"
CLIENT_KEY_FILE = "agent.key"
# The server CA's certificate as enrollment received it (when tls.ca_cert is not set), and
# the bundle the agent verifies the server with: the default CAs plus that one.
ENROLLED_CA_FILE = "ca.crt"
ENROLLED_CA_BUNDLE = "ca-bundle.crt"

# Renew the client certificate once this share of its lifetime has passed.
CERT_RENEW_FRACTION = 2 / 3
# After a failed enrollment or renewal, try again after this long (then back off up to
# CERT_RETRY_CAP); a server without a CA is asked again after CERT_NO_CA_RETRY.
CERT_RETRY = 60.0
CERT_RETRY_CAP = 3600.0
CERT_NO_CA_RETRY = 3600.0

# After a refused (unverifiable, replayed) policy, fetch again after this long rather than
# at once: the server keeps sending the same reply until an operator fixes it.
POLICY_REFUSED_PAUSE = 30.0
