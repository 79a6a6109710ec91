"""The real code location plus one job that holds a heavy slot until a test releases it.

Loaded by the run-queue end-to-end test: it needs heavy runs that stay in progress
for as long as it likes, tagged exactly as the product's heavy jobs are.
"""

import os
import time
from pathlib import Path

from dagster import Definitions, OpExecutionContext, in_process_executor, job, op

from idp_ops import definitions as product  # a module, not a second Definitions in this namespace
from idp_ops.runs import HEAVY_TAG


@op
def hold_until_released(context: OpExecutionContext) -> None:
    release = Path(os.environ["IDP_TEST_RELEASE_FILE"])
    deadline = time.monotonic() + 600
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    context.log.info(f"released: {release.exists()}")


@job(executor_def=in_process_executor, tags=HEAVY_TAG)
def long_heavy_job():
    hold_until_released()


defs = Definitions.merge(product.defs, Definitions(jobs=[long_heavy_job]))
