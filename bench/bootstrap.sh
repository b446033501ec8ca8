#!/usr/bin/env bash
# What the benchmarks need beyond `make install`: the OpenSSH client, sftp and rsync for B0
# (Debian), and the `bench` extra of pyproject.toml in .venv. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in rsync:rsync ssh:openssh-client sftp:openssh-client nginx:nginx; do
  bin=${pair%%:*} pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need_apt+=("$pkg")
done
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
# S10's baseline, Alertmanager 0.25 (bench/s10_alerts.py starts its own; the package's
# service is kept from starting by policy-rc.d below).
[ -x /usr/bin/prometheus-alertmanager ] || need_apt+=(prometheus-alertmanager)
# S8's load generator (Debian's wrk is built with LuaJIT: bench/s8_post_site.lua).
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${need_apt[*]} - run as root, or: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

if [ ! -f .venv/.bench-installed ] || [ pyproject.toml -nt .venv/.bench-installed ]; then
  .venv/bin/pip install -q -e '.[dev,bench]'
  touch .venv/.bench-installed
fi

# S7's baseline: octoDNS with its PowerDNS provider, in a virtualenv of its own so its pins
# never touch the project's.
if [ ! -x .venv-octodns/bin/octodns-sync ]; then
  python3 -m venv .venv-octodns
  .venv-octodns/bin/pip install -q octodns octodns-powerdns
fi
