"""The operator: kopf handlers (``handlers``), reconciliation (``reconcile``), pure status
computation (``status``, ``conditions``) and the one module that talks to the Kubernetes API
(``kube``)."""
