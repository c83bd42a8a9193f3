"""``shoal dashboard``: a small web dashboard over the same reads as ``shoal info``, ``dlq`` and
``schedules``, behind the ``dashboard`` extra (aiohttp, Jinja2). Workers never import it.

* :mod:`.snapshot`: what each page shows, as data (blocking reads through the runtime);
* :mod:`.history`: the in-memory rolling history the sparklines draw, and its sampler;
* :mod:`.access`: read-only unless enabled; the token every write needs;
* :mod:`.links`: links to traces (``SHOAL_TRACE_URL_TEMPLATE``);
* :mod:`.routes`: pages, the JSON API (``/api/``), the writes;
* :mod:`.server`: the aiohttp application, its templates and static files.
"""
