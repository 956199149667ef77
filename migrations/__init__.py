"""Alembic migrations of qfarm's database; `qfarm db upgrade` runs them."""
