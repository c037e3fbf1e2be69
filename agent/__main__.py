"""``python -m agent`` is ``aami-agent``."""

import sys

from agent.cli import main

sys.exit(main())
