"""Locust user classes for the box's endpoints, run by ``idp_ops.core.loadtest`` in a subprocess.

Nothing here is imported by the rest of the package: Locust monkey-patches the
process it runs in with gevent, so it only ever runs as its own ``locust`` process.
"""

from pathlib import Path

INFERENCE_LOCUSTFILE = Path(__file__).with_name("inference.py")
