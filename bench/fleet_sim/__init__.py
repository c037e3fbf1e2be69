"""Fleet simulator: thousands of simulated agents in one process against a real server.

``scripts/bench fleet --agents 10000`` (or ``.venv/bin/python -m bench.fleet_sim``) starts
PostgreSQL, Redis, the API (``aami-server serve`` under gunicorn) and two
``aami-server worker`` processes, then grows
a simulated fleet in steps (by default a tenth, a quarter, half, all of ``--agents``).
Each simulated agent registers with its own id, heartbeats, posts batched results and
keeps an assignment long-poll parked, as ``aami-agent`` does (bench/fleet_sim/agents.py).
Each step is measured over a window: requests per second, p50/p99 latency per kind,
errors, 429s, ingest lag, CPU per process role. At the end every result the fleet made is
looked up in PostgreSQL. ``--restart-server`` restarts the API under the full fleet and
measures the reconnection storm. The same request mix then runs against a minimal Flask
app under the same gunicorn settings (bench/fleet_sim/ceiling.py): the framework's ceiling.
"""
