"""Alembic environment: the URL comes from `qfarm db upgrade` (or alembic.ini's
caller via -x url=...), the metadata from api_client.infra.db.models."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from api_client.config import Settings
from api_client.infra.db.database import normalize_url
from api_client.infra.db.models import Base

config = context.config
target_metadata = Base.metadata

url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
if not url:
    url = normalize_url(Settings.from_env().database_url)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        # Batch mode lets later ALTERs run on SQLite too.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
