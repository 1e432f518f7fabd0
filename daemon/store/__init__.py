"""PostgreSQL storage: migrations, the batched ping writer, and the alert repository.

Typical start-up::

    info = await migrate(dsn)                 # under an advisory lock; logs the layout
    async with open_pool(dsn) as pool, PingWriter(pool) as writer:
        repo = AlertRepository(pool)
        ...
"""

from daemon.store.alerts_repo import AlertRepository
from daemon.store.errors import InvalidRowError, StoreClosedError, StoreError
from daemon.store.migrations import StoreInfo, migrate
from daemon.store.pool import Pool, open_pool
from daemon.store.writer import PingWriter

__all__ = [
    "AlertRepository",
    "InvalidRowError",
    "PingWriter",
    "Pool",
    "StoreClosedError",
    "StoreError",
    "StoreInfo",
    "migrate",
    "open_pool",
]
