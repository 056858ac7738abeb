"""Fixtures shared by many test modules: the throwaway PostgreSQL cluster (tests/pg_support.py) and
Redis server (tests/redis_support.py) that the tests start by themselves."""

from tests.pg_support import postgres_cluster, postgres_url
from tests.redis_support import redis_server

__all__ = ["postgres_cluster", "postgres_url", "redis_server"]
