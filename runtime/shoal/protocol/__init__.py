"""The Redis protocol: the one place Shoal talks to Redis.

Everything Shoal writes to or reads from Redis goes through this package; nothing else in the
runtime or the operator issues a Redis command.

* :mod:`~shoal.protocol.keys`: every key, and the table of what each holds;
* :mod:`~shoal.protocol.scripts`: one Lua script per state change (``lua/``) and the one Python
  builder of each script's KEYS/ARGV;
* :mod:`~shoal.protocol.connection`: opening Redis, which failures are Redis's, errors that name
  the URL;
* :mod:`~shoal.protocol.broker`: the blocking client (producers, the CLI, the operator);
* :mod:`~shoal.protocol.async_broker`: the worker's asyncio client;
* :mod:`~shoal.protocol.results`: the result envelope a handle reads (shared with two scripts);
* :mod:`~shoal.protocol.registry`: the registration each live worker keeps fresh;
* :mod:`~shoal.protocol.server`: a local ``redis-server`` for the demo, ``shoal dev`` and tests.
"""

from shoal.protocol.async_broker import AsyncBroker
from shoal.protocol.broker import Broker
from shoal.protocol.connection import (
    CONNECTION_ERRORS,
    MAX_BACKOFF_S,
    REDIS_ERRORS,
    REFUSED,
    connection_error,
    redis_call_timeout_s,
)
from shoal.protocol.keys import QueueKeys, queue_keys
from shoal.protocol.scripts import (
    MAX_ID_BYTES,
    Fetched,
    Finished,
    Guard,
    Held,
    Leased,
    Outgoing,
    Promoted,
    QueueStats,
    ScheduleRecords,
    readable_id,
)

__all__ = [
    "CONNECTION_ERRORS",
    "MAX_BACKOFF_S",
    "MAX_ID_BYTES",
    "REDIS_ERRORS",
    "REFUSED",
    "AsyncBroker",
    "Broker",
    "Fetched",
    "Finished",
    "Guard",
    "Held",
    "Leased",
    "Outgoing",
    "Promoted",
    "QueueKeys",
    "QueueStats",
    "ScheduleRecords",
    "connection_error",
    "queue_keys",
    "readable_id",
    "redis_call_timeout_s",
]
