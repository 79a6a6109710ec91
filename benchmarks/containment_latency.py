"""Containment latency: idp_ops' contain() against a bare `docker compose stop`, side by side.

contain() does more than stop: it checks the services really stopped (`ps`) and
writes the latch atomically. This prints what that safety costs, as a ratio to
the bare stop, over N alternating rounds on the running CPU stack.

Usage: .venv/bin/python benchmarks/containment_latency.py [ROUNDS]
Needs the CPU stack deployed (`idp-ops deploy`); restarts the stand-in between rounds.
"""

import statistics
import sys
import time

from idp_ops.settings import load_settings
from idp_ops.stack.deploy import clear_latch, compose_project, contain
from idp_ops.stack.probe import wait_until_ready


def main(rounds: int) -> None:
    settings = load_settings()
    project = compose_project(settings)
    services = settings.gpu_services
    gpu_urls = [e.url for e in settings.endpoints if e.compose_service in services]
    bare, ours = [], []
    for _ in range(rounds):
        for label, samples in (("bare", bare), ("ours", ours)):
            project.up(services, timeout=120)
            for url in gpu_urls:
                wait_until_ready(url)
            started = time.perf_counter()
            if label == "bare":
                project.run("stop", "--timeout", str(settings.stop_timeout_s), *services)
            else:
                report = contain(settings, "benchmark", {})
                assert report.ok, report
            samples.append(time.perf_counter() - started)
    clear_latch(settings)
    project.up(services, timeout=120)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"rounds: {rounds}, services: {services}")
    print(f"bare `compose stop`          median {b * 1000:7.1f} ms  (min {min(bare) * 1000:.1f})")
    print(f"contain() stop+verify+latch  median {o * 1000:7.1f} ms  (min {min(ours) * 1000:.1f})")
    print(f"ratio contain/bare: {o / b:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
