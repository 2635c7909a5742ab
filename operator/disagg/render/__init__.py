"""Pure rendering: desired child objects (plain dicts) from an API spec.

No I/O, no kopf, no Kubernetes client (checked by ``lint-imports``): every
function here takes a parsed spec and returns the objects the controller applies
with server-side apply.  Golden files in ``tests/golden/`` pin the output and
every built-in object is validated against the official Kubernetes schemas.
"""

from disagg.render.disaggdeployment import render_disaggdeployment_children
from disagg.render.pool import render_pool_children

__all__ = ["render_disaggdeployment_children", "render_pool_children"]
