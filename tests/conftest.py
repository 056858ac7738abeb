"""Fixtures shared by many test modules: the throwaway PostgreSQL cluster (tests/pg_support.py)."""

from tests.pg_support import postgres_cluster, postgres_url

__all__ = ["postgres_cluster", "postgres_url"]
