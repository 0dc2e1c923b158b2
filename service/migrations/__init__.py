"""Schema migrations: the Alembic environment, the advisory lock and the migrate commands."""
