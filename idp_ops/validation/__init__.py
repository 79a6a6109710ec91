"""Nightly validation: the streaming bench client (TTFT, ITL, decode), the Locust load test
(locustfiles/), the acceptance criteria judged beside the physics ceilings and their DuckDB history.
defs.py: benchmark_results, load_test_results, nightly_validation_job and its 02:00 schedule."""
