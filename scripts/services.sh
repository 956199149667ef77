#!/usr/bin/env bash
# Start Redis and PostgreSQL on this machine if they are not running.
set -euo pipefail
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  # appendonly: queued jobs' messages survive a Redis restart (docs/operations.md, "Reliability and trust").
  mkdir -p "${QFARM_HOME:-$HOME/.qfarm}/redis"
  redis-server --daemonize yes --port 6379 --save "" --appendonly yes --dir "${QFARM_HOME:-$HOME/.qfarm}/redis"
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
for _ in $(seq 1 30); do
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
  sleep 1
done
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
if command -v pg_isready >/dev/null 2>&1; then
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 1
  done
fi
