"""End-to-end tier: tests against a real Kubernetes cluster (the local one of ``testbed.cluster``,
or any kubeconfig in ``E2E_KUBECONFIG``).

Only tests and their fixtures live here (``conftest.py``, ``operator_process.py``); the cluster,
images, monitoring and demo tooling they drive is the ``testbed`` package beside it.  This
folder is a package so that tests can import each other's helpers as ``e2e.<module>``.
"""
