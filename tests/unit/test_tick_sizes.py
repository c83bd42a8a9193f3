"""The operator's count of what each schedule's run adds to its queue (no Redis: the queue's
figures are given poll by poll)."""

from __future__ import annotations

from shoal.autoscale import ScheduledTick
from shoal.protocol import QueueStats
from shoal_operator.tick_sizes import TickSizes


def stats(enqueued: int, waiting: int = 0, in_flight: int = 0, queue: str = "q") -> QueueStats:
    return QueueStats(queue, waiting, in_flight, 0, 0, 0.0, enqueued, 0, 0, 0, 0, 0)


def ticks(*due: tuple[str, float]) -> list[ScheduledTick]:
    return [ScheduledTick(name, "q", in_s=0.0, due_at=at) for name, at in due]


def test_a_run_is_what_the_queue_received_from_the_claim_until_it_idles() -> None:
    sizes = TickSizes()
    sizes.observe([stats(100)], ticks(("a", 60), ("b", 90)))
    # a's tick claimed: its message and 11 more arrive over two polls, then the queue idles
    sizes.observe([stats(105, waiting=5)], ticks(("b", 90), ("a", 120)))
    sizes.observe([stats(112, in_flight=3)], ticks(("b", 90), ("a", 120)))
    told = sizes.observe([stats(112)], ticks(("b", 90), ("a", 120)))
    assert sizes.expected() == {("q", "a"): 12}
    assert [(t.schedule, t.expected_tasks) for t in told] == [("b", 0), ("a", 12)]


def test_the_next_claim_ends_a_run_and_ticks_claimed_together_share() -> None:
    sizes = TickSizes()
    sizes.observe([stats(0)], ticks(("a", 60), ("b", 60)))
    sizes.observe([stats(10, waiting=10)], ticks(("a", 120), ("b", 120)))  # both claimed
    sizes.observe([stats(20, waiting=10)], ticks(("a", 180), ("b", 120)))  # a again, busy
    assert sizes.expected() == {("q", "a"): 5, ("q", "b"): 5}
    sizes.observe([stats(27)], ticks(("a", 180), ("b", 120)))  # 7 more arrived: not idle
    assert sizes.expected()[("q", "a")] == 5
    sizes.observe([stats(27)], ticks(("a", 180), ("b", 120)))  # idle: a's second run, 17
    assert sizes.expected()[("q", "a")] == 11  # the median of 5 and 17


def test_the_median_of_the_last_three_runs_is_told() -> None:
    sizes, enqueued, due = TickSizes(), 0, 60.0
    sizes.observe([stats(enqueued)], ticks(("a", due)))
    for run in (10, 1000, 12, 14):
        due += 60
        sizes.observe([stats(enqueued)], ticks(("a", due)))  # claimed
        enqueued += run
        sizes.observe([stats(enqueued, waiting=run)], ticks(("a", due)))
        sizes.observe([stats(enqueued)], ticks(("a", due)))  # idle: recorded
    assert sizes.expected() == {("q", "a"): 14}  # median of 1000, 12, 14


def test_a_queue_that_never_idles_counts_only_what_the_tick_added() -> None:
    # Given a queue receiving 10 tasks/s all day, and an hourly schedule whose run enqueues 5
    sizes, enqueued, now = TickSizes(), 0, 0.0
    sizes.observe([stats(enqueued, waiting=3)], ticks(("hourly", 3600)), now)
    for _ in range(60):  # a minute of background, polled every second
        now += 1
        enqueued += 10
        sizes.observe([stats(enqueued, waiting=3)], ticks(("hourly", 3600)), now)
    # When the tick is claimed and its run adds 5 on top of the background, for 10 minutes
    for second in range(600):
        now += 1
        enqueued += 10 + (5 if second == 0 else 0)
        sizes.observe([stats(enqueued, waiting=3)], ticks(("hourly", 7200)), now)
    # Then the run closed after MAX_RUN_S and counted the tick's 5, not 10 minutes of traffic
    assert sizes.expected() == {("q", "hourly"): 5}
