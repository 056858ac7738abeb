#!/usr/bin/env bash
# Makes sure the servers that the tests start by themselves are installed: PostgreSQL (initdb, pg_ctl,
# postgres), Redis (redis-server) and HAProxy (haproxy, the load balancer in front of several relay
# nodes), from Debian's packages when missing. Starts nothing: the tests run throwaway instances in
# temporary directories on loopback ports (tests/pg_support.py, tests/redis_support.py,
# tests/haproxy_support.py) and stop them.
#
# Installing needs root and apt-get (as on CI). Without them a missing server is reported here, and
# the tests that need it fail, unless KLUIS_TEST_NO_POSTGRES=1 (local runs) turns them into skips.
set -euo pipefail

have_postgres() {
  if [ -n "${KLUIS_PG_BIN:-}" ] && [ -x "$KLUIS_PG_BIN/initdb" ]; then return 0; fi
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}
have_redis() { command -v redis-server >/dev/null; }
have_haproxy() { command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ]; }

missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
have_haproxy || missing+=(haproxy)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "services: ${missing[*]} missing, and installing needs root and apt-get; the tests that need them" \
    "will fail (KLUIS_TEST_NO_POSTGRES=1 skips the PostgreSQL ones)" >&2
  exit 0
fi

echo "services: installing ${missing[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
# The packages would start system-wide services (PostgreSQL on 5432, Redis on 6379, HAProxy) that the
# tests do not use: a policy-rc.d that says no keeps them from starting, for the length of the install.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
install() { apt-get install -y -q --no-install-recommends "$@" >&2; }
# A fresh machine may have no package lists yet: update once, then try again.
install "${missing[@]}" || { apt-get update -q >&2 && install "${missing[@]}"; }
