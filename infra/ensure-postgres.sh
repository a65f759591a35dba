#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432; start the local cluster if it is installed but down.
# Never fails the build by itself: the tests decide (REQUIRE_POSTGRES=1 turns a missing server into failures).
host=${REGISTRY_TEST_PG_HOST:-127.0.0.1}
port=${REGISTRY_TEST_PG_PORT:-5432}
if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$host" -p "$port"; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for version in $(ls /etc/postgresql); do
    echo "starting PostgreSQL $version cluster 'main'" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>&1 || true
  done
  for _ in $(seq 1 30); do
    pg_isready -q -h "$host" -p "$port" && exit 0
    sleep 1
  done
fi
echo "PostgreSQL is not reachable at $host:$port; PostgreSQL tests will skip (or fail with REQUIRE_POSTGRES=1)" >&2
exit 0
