"""``python -m bench.fleet_sim``: see bench/fleet_sim/__init__.py and ``--help``."""

from bench.fleet_sim.cli import main

raise SystemExit(main())
