"""End-to-end tier: a real single-node Kubernetes cluster (``e2e.cluster``) and tests against it.

This folder is a package so that ``python -m e2e.cluster`` runs from the repository root and the
pytest fixtures in ``conftest.py`` can import the cluster lifecycle directly.
"""
