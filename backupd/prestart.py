"""Which dump ``backupd once`` runs first, known from the configuration alone.

``backupd once`` starts that dump before loading the rest of itself (see
``process.start_early``); the backup then takes the running child over. The command is built
by the same source method the backup uses, so both are equal, or the early child is simply
stopped unused.
"""

from __future__ import annotations

from backupd.config import Settings
from backupd.errors import BackupdError
from backupd.process import Command
from backupd.sources import FileSource, source_for
from backupd.stream import plan_compression


async def first_dump(settings: Settings) -> Command | None:
    """The first target's first dump command; None when it depends on the server (``*``),
    the engine writes a file instead of a stream (SQL Server), or it cannot be built yet
    (the real backup then reports why)."""
    target = settings.targets[0]
    if target.database.all_databases:
        return None
    source = source_for(target)
    if isinstance(source, FileSource):
        return None
    native, _ = plan_compression(
        target.layout.compression, target.database.engine, source.can_compress
    )
    try:
        return await source.dump_command(target.database.databases[0], native)
    except BackupdError:
        return None
