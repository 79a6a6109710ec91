"""The real code location plus one job made to fail, for the alerts' end-to-end test.

Loaded by a real dagster-daemon: run_failure_alert_sensor monitors every job of the
location, this one included.
"""

from dagster import Definitions, in_process_executor, job, op

from idp_ops import definitions as product  # a module, not a second Definitions in this namespace


@op
def fail_on_purpose() -> None:
    raise RuntimeError("made to fail by the alerts end-to-end test")


@job(executor_def=in_process_executor)
def failing_job():
    fail_on_purpose()


defs = Definitions.merge(product.defs, Definitions(jobs=[failing_job]))
