"""The Shoal operator: Queue and Worker custom resources → worker Deployments, autoscaled.

Only the package exists so far; the kopf handlers land with the operator issue. It may import
``shoal``; ``shoal`` never imports it (import-linter enforces the direction).
"""

__all__: list[str] = []
