"""One module per peer: its tasks and a ``Producer`` (run inside that peer's own venv).

Every module exposes:

* the benchmark task, ``work(run, i, t_enq, sleep)``, whose body is :mod:`record`'s bookkeeping;
* ``Producer`` with ``single(run, i, t_enq, sleep)`` and, when the peer has a batch API,
  ``bulk(run, items, sleep)`` (``items`` is a list of ``(i, t_enq)``). Methods may be coroutines
  for asyncio-native peers; ``start()``/``close()`` are optional.

The worker command lines live in :mod:`specs` (the harness side never imports these modules).
"""
