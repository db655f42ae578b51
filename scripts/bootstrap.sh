#!/usr/bin/env bash
# Shared setup for scripts/test.sh and scripts/demo.sh: a project venv with infrabot installed,
# and the cached Synapse the harness and the demo start. Safe to run again; it only adds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

apt_install() {
  # Only what is missing, and only where we may (root on Debian, as on CI).
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "please install: ${missing[*]}" >&2
    return 1
  fi
}

if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
  apt_install python3-venv
fi
# Real servers the demo and the tests start on loopback.
apt_install prometheus-alertmanager
# Prometheus: the backups `prometheus` check is tested against a real one scraping a test exporter.
apt_install prometheus
# OpenSSH: the deploy tests check no-PTY cancel/timeout against a real sshd.
apt_install openssh-server
# Nix evaluates the NixOS module, systemd-analyze checks its unit (tests/test_nix_module.py).
apt_install nix-bin systemd
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${EXTRAS:-test}]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'from devstack.synapse import synapse_python; synapse_python()'
