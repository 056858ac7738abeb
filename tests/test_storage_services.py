"""The services the storage tests start by themselves: a throwaway PostgreSQL cluster and Redis server
on loopback ports, in temporary directories, stopped at the end (tests/pg_support.py,
tests/redis_support.py)."""

from __future__ import annotations

import psycopg

from tests.pg_support import PostgresCluster
from tests.redis_support import RedisServer, ping


def test_postgres_cluster_hands_out_fresh_databases(postgres_cluster: PostgresCluster) -> None:
    first, second = postgres_cluster.create_database(), postgres_cluster.create_database()
    assert first != second
    assert "127.0.0.1" in first
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
    with psycopg.connect(second, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
        setting = conn.execute("SHOW listen_addresses").fetchone()
        assert setting == ("127.0.0.1",)


def test_redis_server_starts_restarts_and_stops(redis_server: RedisServer) -> None:
    port, pid = redis_server.port, redis_server.pid
    assert ping(port)
    assert redis_server.url == f"redis://127.0.0.1:{port}/0"
    redis_server.kill()
    assert not ping(port, timeout=0.2)
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != pid
    assert ping(port)
    directory = redis_server.directory
    redis_server.stop()
    assert not ping(port, timeout=0.2)
    assert not directory.exists()
