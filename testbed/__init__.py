"""The test bed: a real local Kubernetes cluster and the tools around it (see README.md).

``testbed.cluster`` builds and runs the cluster, ``testbed.images`` builds and loads our
container images, ``testbed.monitoring`` runs Prometheus and prometheus-adapter beside it and
``testbed.demo`` puts it all together.  The e2e tier (``e2e/``), the demo and the Makefile use
it; it is not part of the product: it imports nothing of ``disagg`` (checked by
``.importlinter``) and is not in the ``disagg`` wheel, so the images never carry it.
"""
