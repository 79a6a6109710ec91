"""The ops platform's own Dagster infrastructure (compose/ops): the run launcher that starts each box's runs
on that box's Docker engine (launcher.py) with the per-box, per-job run-container decisions it applies
(run_context.py, plain Python), and the platform's housekeeping (housekeeping.py, wired in defs.py)."""
