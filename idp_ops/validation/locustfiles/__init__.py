"""Locust user classes for the box's endpoints, run by ``idp_ops.validation.loadtest`` in a subprocess.

Never import ``inference`` into a process of ours: importing locust runs gevent's
``monkey.patch_all()`` on the importing process (sockets, threads, ssl), which breaks
httpx, Dagster and DuckDB there. It only ever runs as its own ``locust`` process; this
package exports nothing but the file's path.
"""

from pathlib import Path

INFERENCE_LOCUSTFILE = Path(__file__).with_name("inference.py")
