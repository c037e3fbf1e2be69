# shellcheck shell=bash disable=SC2034  # the package lists are read by the callers
# Shared set-up for scripts/test and scripts/demo: Debian packages and the .venv.
# Sourced, not run: the caller has already cd'ed to the repository root.

# redis-server, postgresql: integration tests start private servers from these binaries.
# monitoring-plugins: real Nagios plugins for the agent's checks. uuid-runtime: uuidgen.
# systemd: systemd-analyze verifies our units. chromium, chromium-driver: UI tests.
# No recommends: they pull in daemons (avahi, cups) that a test machine does not want.
TEST_PACKAGES=(redis-server postgresql monitoring-plugins uuid-runtime systemd
               chromium chromium-driver)
DEMO_PACKAGES=(monitoring-plugins)
VENV=.venv
STAMP=$VENV/.aami-install-stamp

step() { printf '\n==> %s\n' "$*"; }

# install_system_packages PACKAGE...: apt-get installs those not installed yet.
install_system_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        step "System packages already installed"
        return
    fi
    local sudo=()
    if ((EUID != 0)); then sudo=(sudo); fi
    step "Installing system packages: ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"
}

find_python() {
    local candidate candidates=(python3.11 "${PYENV_ROOT:-$HOME/.pyenv}/shims/python3.11" python3)
    if [[ -n ${PYTHON:-} ]]; then candidates=("$PYTHON"); fi
    for candidate in "${candidates[@]}"; do
        if command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
        then
            echo "$candidate"
            return
        fi
    done
    echo "error: no Python >= 3.11 with venv found: install python3.11 (Debian: python3 python3-venv)" \
         "or set PYTHON=/path/to/python3.11" >&2
    exit 1
}

setup_venv() {
    local python
    python=$(find_python)
    # A venv whose interpreter is gone (pyenv upgrade, copied tree) is rebuilt from scratch.
    if [[ -d $VENV ]] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        step "Removing broken $VENV"
        rm -rf "$VENV"
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        step "Creating $VENV with $("$python" --version)"
        "$python" -m venv "$VENV"
    fi
    # Reinstall only when pyproject.toml or the interpreter changed since the last good
    # install, or when the installed distribution is missing.
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" --version)"
    if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]] \
        && "$VENV/bin/python" -c 'import importlib.metadata as m; m.distribution("aami")' 2>/dev/null
    then
        step "$VENV is up to date with pyproject.toml"
        return
    fi
    step "Installing aami[dev] into $VENV"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q \
        -e '.[dev]'
    echo "$want" >"$STAMP"
}

