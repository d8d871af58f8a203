"""Alembic environment for tongcrm. The logic lives in ``tongcrm.db.migrate`` so the wheel's copy is this file."""

from alembic import context
from tongcrm.db.migrate import run_env

run_env(context)
