"""Every Redis key Shoal uses, built in one place.

All keys of one queue share the hash tag ``{queue}``, so a queue lives in one Redis Cluster slot
and every multi-key transition can be one Lua script. The waiting backlog is a single LIST whose
length *is* the number of ready messages, so a stock KEDA redis scaler (``listName``) can read it.

=====================================  ======  ===================================================
key                                    type    meaning
=====================================  ======  ===================================================
``{p}:{q}:waiting``                    LIST    tokens ``<ready_ms>:<id>`` of ready messages;
                                               LPUSH at enqueue, RPOP at fetch (FIFO)
``{p}:{q}:ready``                      ZSET    tokens of waiting messages enqueued with a
                                               priority → score (ready ms + the priority's
                                               offset); their tokens stay in waiting
``{p}:{q}:stale``                      SET     tokens still in waiting of messages already
                                               leased by priority: dropped when fetched
``{p}:{q}:messages``                   HASH    id → envelope JSON, for every live message
``{p}:{q}:inflight``                   ZSET    id → lease deadline (ms, Redis clock)
``{p}:{q}:delayed``                    ZSET    id → due time (ms, Redis clock)
``{p}:{q}:dead``                       ZSET    id → dead-lettered at (ms)
``{p}:{q}:dead:entries``               HASH    id → dead-letter entry JSON (reason, error, …):
                                               bounded, what listing reads
``{p}:{q}:dead:bodies``                HASH    id → the dead letter's message: its envelope,
                                               or the first 4 KiB of bytes that were not one
``{p}:{q}:stats``                      HASH    counters: enqueued, completed, retried, dead,
                                               recovered, leases
``{p}:{q}:deliveries``                 HASH    id → times handed to a worker: counts lost
                                               deliveries (``worker_lost``)
``{p}:{q}:owners``                     HASH    id → owner token of the current lease, a
                                               number never handed out twice (the stats
                                               counter ``leases``): only the owner may ack,
                                               renew, retry, hand back or dead-letter
``{p}:{q}:dedupe``                     HASH    dedupe key → id of the live message holding it
``{p}:{q}:config``                     HASH    queue defaults (max_retries, timeout, …)
``{p}:{q}:result:<id>``                LIST    one result JSON (:mod:`.results`), with a TTL
``{p}:{q}:schedules``                  HASH    schedule name → schedule JSON (code or Queue CR)
``{p}:{q}:schedule:runs``              HASH    schedule name → last claimed tick
                                               ``<tick_ms> <id|-> <claimed_ms> <timing>
                                               <reason>``
``{p}:{q}:schedules:seen``             HASH    code schedule name → when a worker last
                                               declared it (ms): older ones are stale
``{p}:{q}:schedules:declared``         STRING  when a worker of the queue last declared its
                                               code schedules, none included (ms)
``{p}:{q}:workflow:<wid>``             HASH    workflow steps already started from this
                                               queue's slot (enqueue guards), with a TTL
``{p}:{q}:group:<gid>``                HASH    one workflow group: ``then`` (what follows it),
                                               ``size``, member index → result JSON; TTL
``{p}:{q}:group:<gid>:done``           STRING  what follows that group has started (the
                                               group's record is gone then); TTL
``{p}:{q}:paused``                     STRING  present while the queue is paused (JSON: when,
                                               by whom): fetch leases nothing, enqueue goes on
``{p}:{q}:cancels``                    ZSET    id → when a cancel was asked of a running
                                               message (ms); its worker reads it when it renews
                                               the lease; entries older than the result TTL
                                               are pruned by the next cancel
``{p}:{q}:rate``                       HASH    rate clocks (GCRA: when the next start is due,
                                               ms): ``queue`` for the queue's ``rate_limit``,
                                               ``task:<name>`` for a task's
``{p}:{q}:rate:reserved:<task>``       ZSET    id → the start slot reserved for a message
                                               the task's rate limit put back as delayed
``{p}:{q}:progress:<id>``              STRING  a running task's last ``shoal.progress`` report
                                               (JSON), with the result TTL
``{p}:{q}:notify``                     pubsub  published when waiting goes from empty to not
``{p}:queues``                         SET     every queue name ever enqueued to
``{p}:workers``                        ZSET    worker id → last heartbeat (ms, the worker's
                                               clock); liveness is the registration's TTL
``{p}:worker:<id>``                    STRING  worker registration JSON (:mod:`.registry`),
                                               expires with its TTL
=====================================  ======  ===================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue. Build with :func:`queue_keys`."""

    queue: str
    base: str
    """``{p}:{q}:``, the start of every key of the queue."""
    waiting: str
    messages: str
    inflight: str
    delayed: str
    dead: str
    dead_entries: str
    dead_bodies: str
    stats: str
    deliveries: str
    owners: str
    dedupe: str
    config: str
    notify: str
    result_prefix: str
    schedules: str
    schedule_runs: str
    schedules_seen: str
    schedules_declared: str
    paused: str
    cancels: str
    rate: str
    ready: str
    stale: str

    def result(self, message_id: str) -> str:
        """Key of the stored result of one message."""
        return self.result_prefix + message_id

    def rate_reserved(self, task: str) -> str:
        """Start slots reserved for the messages of ``task`` its rate limit put back."""
        return self.base + "rate:reserved:" + task

    def progress(self, message_id: str) -> str:
        """Key of a running message's last progress report."""
        return self.base + "progress:" + message_id

    def workflow(self, workflow_id: str) -> str:
        """Guards of the workflow steps started into this queue."""
        return self.base + "workflow:" + workflow_id

    def group(self, group_id: str) -> str:
        """Member results of one workflow group."""
        return self.base + "group:" + group_id

    def group_done(self, group_id: str) -> str:
        """Set once what follows a workflow group has started."""
        return self.base + "group:" + group_id + ":done"


def queue_keys(prefix: str, queue: str) -> QueueKeys:
    """Keys of ``queue`` under ``prefix``; all in the queue's hash slot."""
    base = f"{prefix}:{{{queue}}}:"
    return QueueKeys(
        queue=queue,
        base=base,
        waiting=base + "waiting",
        messages=base + "messages",
        inflight=base + "inflight",
        delayed=base + "delayed",
        dead=base + "dead",
        dead_entries=base + "dead:entries",
        dead_bodies=base + "dead:bodies",
        stats=base + "stats",
        deliveries=base + "deliveries",
        owners=base + "owners",
        dedupe=base + "dedupe",
        config=base + "config",
        notify=base + "notify",
        result_prefix=base + "result:",
        schedules=base + "schedules",
        schedule_runs=base + "schedule:runs",
        schedules_seen=base + "schedules:seen",
        schedules_declared=base + "schedules:declared",
        paused=base + "paused",
        cancels=base + "cancels",
        rate=base + "rate",
        ready=base + "ready",
        stale=base + "stale",
    )


def queues_key(prefix: str) -> str:
    """SET of every queue name that has been enqueued to (for ``shoal info``)."""
    return f"{prefix}:queues"


def workers_key(prefix: str) -> str:
    """ZSET of worker ids scored by their last heartbeat."""
    return f"{prefix}:workers"


def worker_key(prefix: str, worker_id: str) -> str:
    """One worker's registration."""
    return f"{prefix}:worker:{worker_id}"
