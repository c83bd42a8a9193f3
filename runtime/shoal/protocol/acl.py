"""The least-privilege Redis ACL rule for Shoal: the commands it sends, the keys and channels of
its prefix, nothing else.

Workers, producers, the CLI and the operator share one rule: a producer's enqueue and a worker's
fetch are the same Lua scripts, and Redis checks every command a script runs against the user
calling it. ``shoal redis-acl`` prints the ``ACL SETUSER`` line; the tests run the suite as a user
made from it, so a command added to Shoal without being added here fails them.
"""

from __future__ import annotations

COMMANDS = (
    # the handshake redis-py makes, and its health checks (its CLIENT SETINFO is refused
    # without harm: Redis before 7.2 has no such command to grant)
    "hello",
    "auth",
    "select",
    "ping",
    # Lua scripts (EVALSHA, loaded on first use); each runs as this user
    "evalsha",
    "script|load",
    "script|exists",
    # wake-ups: enqueue.lua publishes, idle workers subscribe
    "publish",
    "subscribe",
    "unsubscribe",
    # Redis's clock, the one every scheduler keeps
    "time",
    # strings and keys
    "get",
    "set",
    "del",
    "exists",
    "pexpire",
    # hashes: messages, owners, deliveries, dedupe, config, schedules, groups, dead letters
    "hget",
    "hset",
    "hsetnx",
    "hdel",
    "hgetall",
    "hmget",
    "hexists",
    "hincrby",
    "hlen",
    # lists: the waiting list, stored results
    "lpush",
    "rpush",
    "rpop",
    "llen",
    "lindex",
    "blmove",
    "lmove",  # a priority fetch moves a low-priority token aside
    # sorted sets: in flight, delayed, dead, the worker registry
    "zadd",
    "zrem",
    "zcard",
    "zcount",
    "zscore",
    "zrange",
    "zrevrange",
    "zrangebyscore",
    "zpopmin",
    "zremrangebyscore",  # old cancel requests are pruned
    # sets: the queues registry, stale priority tokens
    "sadd",
    "srem",
    "scard",
    "smembers",
    # the dashboard's bounded walk over one queue's workflow records, and their TTLs
    "scan",
    "pttl",
    # transactions (schedule and queue-default writes, all keys in one slot)
    "multi",
    "exec",
    "discard",
    # Redis Cluster: the client reads the slot map and the command table
    "cluster|slots",
    "cluster|shards",
    "cluster|nodes",
    "command",
    # SHOAL_REDIS_WAIT_REPLICAS: an enqueue waits for replicas
    "wait",
)


def acl_rule(key_prefix: str) -> list[str]:
    """``ACL SETUSER`` arguments after the user name, without ``on`` and the password: keys and
    channels under ``key_prefix`` (a glob; the tests use ``t*``), and the commands above."""
    return [
        "resetkeys",
        f"~{key_prefix}:*",
        "resetchannels",
        f"&{key_prefix}:*",
        "-@all",
        *(f"+{command}" for command in COMMANDS),
    ]


def acl_setuser(user: str, key_prefix: str, password: str = "CHANGE-ME") -> str:
    """The whole ``ACL SETUSER`` line, to paste into ``redis-cli`` or an ``aclfile``."""
    return " ".join(["ACL", "SETUSER", user, "on", f">{password}", *acl_rule(key_prefix)])
