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
#
# The UUID comes from uuidgen, else the kernel (/proc/sys/kernel/random/uuid), else
# Python. Exit codes: 0 the id is in place (printed on stdout), 1 it is not.
set -eu

root=${AAMI_ROOT:-}
root=${root%/}
id_file="$root${AAMI_AGENT_ID_FILE:-/etc/aami/agent-id}"
id_dir=$(dirname -- "$id_file")

fail() {
    echo "install-agent.sh: $*" >&2
    exit 1
}

# Canonical form: 8-4-4-4-12 hex digits, lower case.
canonical_uuid() {
    printf '%s\n' "$1" | tr 'A-F' 'a-f' \
        | grep -xE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' || true
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
trap 'rm -f -- "$tmp"' EXIT
echo "$agent_id" >"$tmp"
chmod 0644 -- "$tmp"
if ! ln -- "$tmp" "$id_file" 2>/dev/null; then
    [ -e "$id_file" ] || fail "cannot create $id_file"
    # Someone else created it a moment ago: theirs is the id.
    agent_id=$(canonical_uuid "$(tr -d '[:space:]' <"$id_file")")
    [ -n "$agent_id" ] || fail "$id_file appeared but does not hold a UUID"
fi
echo "$agent_id"
