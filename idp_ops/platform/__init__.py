"""The ops platform's own Dagster infrastructure (compose/ops): the run launcher that starts each box's runs
on that box's Docker engine (launcher.py), and the per-box, per-job run-container decisions it applies
(run_context.py, plain Python)."""
