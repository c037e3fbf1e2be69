#!/bin/sh
# install-agent.sh: give this host its AAMI agent id, once.
#
# The agent's identity on the config-server is a UUID kept in /etc/aami/agent-id. It is
# made here, at install time, so that it exists before the agent first starts and never
# changes afterwards: running this script again (or the aami_agent Ansible role, or the
# agent itself) keeps the id that is there. A file that does not hold a UUID is left
# alone and reported - a silently new id would be a new target on the server.
#
#   sudo ./install-agent.sh                     # prints the id (new or existing)
#   AAMI_AGENT_ID=<uuid> ./install-agent.sh     # use this id if the host has none yet
#                                               # (a target pre-registered on the server)
#   AAMI_ROOT=/tmp/root ./install-agent.sh      # everything under a prefix (tests, images)
#   AAMI_POLICY_KEY=<base64> ./install-agent.sh  # also trust the server's policy key:
#                                               # add it to server.policy_keys of the
#                                               # agent's configuration (AAMI_AGENT_CONFIG,
#                                               # default /etc/aami/agent.yaml)
#
# Without a policy key an agent that talks plain HTTP refuses every check policy; over
# verified TLS it pins the key the server announces at registration (docs/agent-config.md,
# "Signed policies"). "aami-server policy-key show" on the server prints the key.
# The UUID comes from uuidgen, else the kernel (/proc/sys/kernel/random/uuid), else
# Python. Exit codes: 0 the id is in place (printed on stdout) and AAMI_POLICY_KEY, if
# given, is trusted; 1 either is not (the message on stderr says which).
set -eu

root=${AAMI_ROOT:-}
root=${root%/}
id_file="$root${AAMI_AGENT_ID_FILE:-/etc/aami/agent-id}"
id_dir=$(dirname -- "$id_file")
config="$root${AAMI_AGENT_CONFIG:-/etc/aami/agent.yaml}"
policy_key=${AAMI_POLICY_KEY:-}
tmp=
tmp_config=
trap 'rm -f -- ${tmp:+"$tmp"} ${tmp_config:+"$tmp_config"}' EXIT

fail() {
    echo "install-agent.sh: $*" >&2
    exit 1
}

# Canonical form: 8-4-4-4-12 hex digits, lower case.
canonical_uuid() {
    printf '%s\n' "$1" | tr 'A-F' 'a-f' \
        | grep -xE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' || true
}

# A base64 Ed25519 public key is 32 bytes: 43 characters and one '=' of padding.
if [ -n "$policy_key" ] && ! printf '%s\n' "$policy_key" | grep -qxE '[A-Za-z0-9+/]{43}='; then
    fail "AAMI_POLICY_KEY=$policy_key is not a base64 Ed25519 public key (44 characters, as 'aami-server policy-key show' prints it)"
fi

# Add AAMI_POLICY_KEY to server.policy_keys, as the first key of the server section with
# that section's indentation. A configuration that lists other keys is left alone: a
# trusted key is never replaced behind the operator's back.
trust_policy_key() {
    [ -n "$policy_key" ] || return 0
    [ -f "$config" ] || fail "AAMI_POLICY_KEY: there is no $config to add the key to yet; write the agent's configuration first (the aami_agent role writes the key itself: aami_agent_policy_keys)"
    if grep -qE '^[[:space:]]+policy_keys:' "$config"; then
        grep -qF -- "$policy_key" "$config" && return 0
        fail "$config already lists other server.policy_keys; add $policy_key there by hand"
    fi
    grep -qxE 'server:[[:space:]]*' "$config" \
        || fail "$config has no block-style 'server:' section to add policy_keys to; add policy_keys: [\"$policy_key\"] under server: by hand"
    tmp_config=$(mktemp "$(dirname -- "$config")/.agent.yaml.XXXXXX")
    awk -v key="$policy_key" '
        function add(indent) { print indent "policy_keys: [\"" key "\"]  # added by install-agent.sh"; state = 2 }
        state == 1 && /^[[:space:]]+[^[:space:]#]/ { match($0, /^[[:space:]]+/); add(substr($0, 1, RLENGTH)) }
        state == 1 && /^[^[:space:]#]/ { add("  ") }
        { print }
        state == 0 && /^server:[[:space:]]*$/ { state = 1 }
        END { if (state == 1) add("  ") }
    ' "$config" >"$tmp_config"
    # Rewritten in place: the file keeps its owner and mode (it may be 0640 root:aami).
    cat -- "$tmp_config" >"$config"
    echo "install-agent.sh: $config now trusts policy key $policy_key" >&2
}

new_uuid() {
    if command -v uuidgen >/dev/null 2>&1; then
        uuidgen -r
    elif [ -r /proc/sys/kernel/random/uuid ]; then
        cat /proc/sys/kernel/random/uuid
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import uuid; print(uuid.uuid4())'
    else
        fail "no way to make a UUID here (install uuid-runtime or util-linux)"
    fi
}

if [ -e "$id_file" ]; then
    if [ ! -f "$id_file" ] || [ ! -r "$id_file" ]; then
        fail "$id_file exists but is not a readable file"
    fi
    existing=$(canonical_uuid "$(tr -d '[:space:]' <"$id_file")")
    [ -n "$existing" ] || fail "$id_file does not hold a UUID; fix it, or remove it to make a new id (the server will then see a new target)"
    if [ -n "${AAMI_AGENT_ID:-}" ] && [ "$(canonical_uuid "$AAMI_AGENT_ID")" != "$existing" ]; then
        fail "$id_file already holds $existing, not AAMI_AGENT_ID=$AAMI_AGENT_ID; an agent id is never replaced"
    fi
    trust_policy_key
    echo "$existing"
    exit 0
fi

if [ -n "${AAMI_AGENT_ID:-}" ]; then
    agent_id=$(canonical_uuid "$AAMI_AGENT_ID")
    [ -n "$agent_id" ] || fail "AAMI_AGENT_ID=$AAMI_AGENT_ID is not a UUID"
else
    agent_id=$(canonical_uuid "$(new_uuid)")
    [ -n "$agent_id" ] || fail "could not make a UUID"
fi

mkdir -p -- "$id_dir"
chmod 0755 -- "$id_dir"
# Written to a temporary file, then hard-linked into place: the link fails if another
# installer (or the agent) got there first, and nobody ever reads a half-written file.
tmp=$(mktemp "$id_dir/.agent-id.XXXXXX")
echo "$agent_id" >"$tmp"
chmod 0644 -- "$tmp"
if ! ln -- "$tmp" "$id_file" 2>/dev/null; then
    [ -e "$id_file" ] || fail "cannot create $id_file"
    # Someone else created it a moment ago: theirs is the id.
    agent_id=$(canonical_uuid "$(tr -d '[:space:]' <"$id_file")")
    [ -n "$agent_id" ] || fail "$id_file appeared but does not hold a UUID"
fi
trust_policy_key
echo "$agent_id"
