"""Database engines, one module each, all behind ``base.Source``."""

from __future__ import annotations

from backupd.config import DatabaseConfig, Engine
from backupd.errors import ConfigError
from backupd.sources.base import ServerInfo, Source
from backupd.sources.mysql import MySQLSource
from backupd.sources.postgres import PostgresSource

__all__ = ["ServerInfo", "Source", "source_for"]


def source_for(config: DatabaseConfig) -> Source:
    """The engine module for ``config.engine``."""
    if config.engine is Engine.POSTGRES:
        return PostgresSource(config)
    if config.engine in (Engine.MYSQL, Engine.MARIADB):
        return MySQLSource(config)
    raise ConfigError([f"DB_TYPE: {config.engine} is not supported by this version of backupd"])
