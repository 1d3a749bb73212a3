"""Database engines, one module each, all behind ``base.Source``."""

from __future__ import annotations

from backupd.config import Engine, TargetConfig
from backupd.sources.base import BackupSource, FileSource, ServerInfo, Source
from backupd.sources.mssql import MSSQLSource
from backupd.sources.mysql import MySQLSource
from backupd.sources.postgres import PostgresSource

__all__ = ["BackupSource", "FileSource", "ServerInfo", "Source", "source_for"]


def source_for(target: TargetConfig) -> Source | FileSource:
    """The engine module for the target's ``DB_TYPE``."""
    engine = target.database.engine
    if engine is Engine.POSTGRES:
        return PostgresSource(target.database)
    if engine is Engine.MSSQL:
        return MSSQLSource(target)
    return MySQLSource(target.database)
