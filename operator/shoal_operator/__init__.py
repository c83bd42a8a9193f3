"""The Shoal operator: Queue and Worker custom resources → worker Deployments, with status.

Importing the package registers the kopf handlers, so ``kopf run -m shoal_operator`` works;
``shoal-operator`` is the same with the operator's settings (namespaces, liveness endpoint).
It may import ``shoal``; ``shoal`` never imports it (import-linter enforces the direction).
"""

from shoal_operator import handlers

__all__ = ["handlers"]
