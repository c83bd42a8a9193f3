"""An app with an every-second schedule, for the ``shoal worker`` subprocess tests (on
PYTHONPATH). Each run records its message id: ``HINCRBY {prefix}:test:runs <id> 1``."""

from __future__ import annotations

from shoal import App
from shoal.logs import current_task

app = App()


@app.periodic("* * * * * *", queue="ticks", name="tick")
def tick() -> None:
    """Count this execution under its message id (one per tick, if ticks are claimed once)."""
    context = current_task.get()
    assert context is not None
    app.broker.redis.hincrby(f"{app.settings.key_prefix}:test:runs", context.task_id, 1)
