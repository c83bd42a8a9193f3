"""``shoal-operator``: run the kopf operator on the namespaces of its settings."""

from __future__ import annotations

import asyncio
import logging

import kopf

from shoal_operator import handlers  # noqa: F401 - registers the handlers
from shoal_operator.settings import OperatorSettings


def main() -> None:
    settings = OperatorSettings.from_env()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    kopf.configure(verbose=False)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
        )
    )


if __name__ == "__main__":
    main()
