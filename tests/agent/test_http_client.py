"""agent/transport/http_client.py: requests without its character-set detector."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# In a fresh interpreter: what the agent process sees.
SCRIPT = textwrap.dedent(
    """
    import sys
    from agent.transport.http_client import requests
    print("detector loaded:", "charset_normalizer" in sys.modules or "chardet" in sys.modules)
    response = requests.models.Response()
    response._content = "température 21 °C".encode()
    response.headers["Content-Type"] = "application/octet-stream"  # no charset
    print("text:", response.text)
    import charset_normalizer  # still importable by anything else
    print("later import:", charset_normalizer.__name__)
    """
)


def test_requests_loads_without_a_detector_and_decodes_undeclared_bodies_as_utf8() -> None:
    done = subprocess.run([sys.executable, "-W", "error", "-c", SCRIPT],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "detector loaded: False",
        "text: température 21 °C",
        "later import: charset_normalizer",
    ]
