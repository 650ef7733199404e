#!/usr/bin/env bash
# One-time, idempotent set-up for `make demo` and `make test` on a fresh machine:
# a virtual environment in .venv with the package and its extras, and Debian's mosquitto, socat and
# chromium (the status page's tests drive it headless).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${need_apt[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: please install ${need_apt[*]} (sudo apt-get install ${need_apt[*]}); tests that need them will fail" >&2
    fi
fi

# Some machines' pip configuration names local mirror folders that may be absent; pip warns about each
# one on every install. Those lines are noise; anything else pip says is shown, and a failure stops.
pip_install() {
    "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "setup: pip failed (exit $rc)" >&2; exit 1; }
}

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
# Reinstall only when the dependency list changed.
stamp=.venv/.der-gateway-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing der-gateway with its extras into .venv (first run takes a minute)"
    pip_install .venv/bin/python -m pip install -q --upgrade pip
    pip_install .venv/bin/python -m pip install -q -e '.[sim,dev]'
    touch "$stamp"
fi
