#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for `make run` and `make test`:
# the real components (apt) and the project's virtualenv (.venv). Idempotent and quiet
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
for pair in nginx:nginx pdns_server:pdns-server sshd:openssh-server bwrap:bubblewrap \
            dig:dnsutils sqlite3:sqlite3 pebble:pebble; do
  bin=${pair%%:*} pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need_apt+=("$pkg")
done
[ -f /usr/lib/x86_64-linux-gnu/pdns/libgsqlite3backend.so ] || \
  ls /usr/lib/*/pdns/libgsqlite3backend.so >/dev/null 2>&1 || need_apt+=(pdns-backend-sqlite3)
[ -f /etc/nginx/mime.types ] || need_apt+=(nginx-common)
# Template build steps run the system's python3 inside bubblewrap (never the project's);
# the blog's (1.1.0 on) renders Markdown with its markdown-it-py.
[ -x /usr/bin/python3 ] || need_apt+=(python3)
[ -d /usr/lib/python3/dist-packages/markdown_it ] || need_apt+=(python3-markdown-it)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${need_apt[*]} - run as root, or: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  echo "installing ${need_apt[*]} (apt)…"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the distribution's own nginx/pdns services from starting on ports 80/53.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

python=$(command -v python3.11 || true)
if [ -z "$python" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  python=$(command -v python3.11 || command -v python3)
fi

if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "preparing the virtualenv (.venv)…"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.installed
fi
# Byte-compile once: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every service
# start would otherwise recompile FastAPI, pydantic and SQLAlchemy from source (~30 s CPU).
.venv/bin/python -m compileall -q -j 0 .venv/lib shared services cli >/dev/null 2>&1 || true

# RabbitMQ and PostgreSQL are expected to run already (as on the CI machines); say so
# clearly instead of failing deep inside a test if they do not.
for port_name in 5672:RabbitMQ 5432:PostgreSQL; do
  port=${port_name%%:*} name=${port_name##*:}
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "$name is not reachable on 127.0.0.1:$port - start it first (see README)." >&2
    exit 1
  fi
done
