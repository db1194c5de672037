"""The database layer: named queries, connections, migrations.

Only this package talks to psycopg directly about connections; psycopg errors
raised while connecting are turned into common.errors.DatabaseUnavailable with
the URL redacted.
"""

from orchestrator.db.connect import connect, open_pool
from orchestrator.db.queries import Q

__all__ = ["Q", "connect", "open_pool"]
