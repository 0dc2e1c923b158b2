"""Alembic environment: kept thin; the work is in service.migrations.environment."""

from alembic import context
from service.migrations.environment import run

run(context)
