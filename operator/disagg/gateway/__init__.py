"""The KV-routing gateway: an OpenAI-compatible front door for a prefill and a decode pool.

Layout (one noun per module):

* ``routing/`` -- the PURE policy engine (filters -> weighted scorers -> picker, the selective
  disaggregation decider, the KV-layout pairing rule); no I/O, table-tested.
* ``config``    -- the routing ConfigMap's schema (pydantic), also built from the command line.
* ``upstream``  -- the ONE module that imports an HTTP client: long-lived clients for workers and
  the Kubernetes API server, with a small exception tree.
* ``discovery`` -- where the workers are and what they are: a static list or Pods followed live.
* ``pools``     -- live worker state per pool and the bounded admission queue.
* ``telemetry`` -- periodic scrape of the workers' ``/health`` and ``/metrics``.
* ``metrics``   -- the gateway's own Prometheus series.
* ``requests``  -- client body validation (4xx, never 5xx) and the two P/D legs' bodies.
* ``context``   -- one request's context and the route it takes (the ``X-Disagg-*`` headers).
* ``flow``      -- plan, admit, then the legs: ``prefill`` and ``decode``, with their retries.
* ``handoff``   -- the check ``kv_transfer_params`` pass before a decode worker sees them.
* ``relay``     -- commit on the first output, then bytes through, an error frame instead of a
  silent truncation.
* ``replies``   -- what the flow hands the HTTP layer.
* ``app``       -- the Starlette application; ``server`` runs it (header limits, shutdown).

See docs/gateway.md.
"""
