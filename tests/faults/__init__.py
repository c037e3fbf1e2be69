"""The fault suite (issue 8): a real agent runs checks end to end while one part of the
system fails under it, and every result must be accounted for at the end.

Each test starts PostgreSQL, Redis, the API (gunicorn), one ingest worker and a real
``aami-agent run`` whose server address is a TCP proxy the test controls
(tests/faults/harness.py, proxy.py). Three checks run every second and record each run
in a ledger file. Then one fault: SIGKILL of the API, of the worker, of Redis (with the
README's append-only persistence), of PostgreSQL; the network path losing replies, black-
holed, then resetting connections; the disk under the agent's spool filling up. After the
fault heals and the agent has flushed, the rows in ``check_results`` must be exactly the
runs in the ledger minus the results the agent counted as dropped: none twice, none
unknown, and none dropped at all except when the disk was full.
"""
