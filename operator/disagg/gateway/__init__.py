"""The KV-routing gateway: an OpenAI-compatible front door for a prefill and a decode pool.

Layout (one noun per module):

* ``routing/`` -- the PURE policy engine (filters -> weighted scorers -> picker, the selective
  disaggregation decider); no I/O, table-tested.
* ``config``    -- the routing ConfigMap's schema (pydantic), also built from the command line.
* ``upstream``  -- the ONE module that imports httpx: a long-lived client for workers and the
  Kubernetes API server, with a small exception tree.
* ``discovery`` -- where the workers are: a static list or EndpointSlices followed live.
* ``pools``     -- live worker state per pool and the bounded admission queue.
* ``telemetry`` -- periodic scrape of the workers' ``/metrics`` for the load scorers.
* ``metrics``   -- the gateway's own Prometheus series.
* ``requests``  -- client body validation (400s, never 500s) and the two P/D legs' bodies.
* ``flow``      -- the P/D request flow with its fallbacks.
* ``relay``     -- the SSE relay: bytes through, an error frame instead of a silent truncation.
* ``app``       -- the Starlette application; ``cli`` runs it with uvicorn.

See docs/gateway.md.
"""
