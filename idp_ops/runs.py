"""How runs are queued and scheduled: the tags the run queue limits, the schedules' timezone.

The run queue (dagster.yaml) limits runs by these tags, not by a global cap:
- heavy runs (deploy, validation, downloads, backup, restore, reports) at most 2 at
  once on a 2-core box;
- runs that change the stack (deploy, validation) one at a time.
containment_job carries neither and the highest priority: it never waits in the queue.
"""

from idp_ops.settings import SettingsError, load_settings

HEAVY_TAG = {"idp_ops/heavy": "true"}
STACK_EXCLUSIVE_TAG = {"idp_ops/stack": "exclusive", **HEAVY_TAG}
CONTAINMENT_TAGS = {"dagster/priority": "100"}


def _configured_timezone() -> str:
    # Read once at import: Dagster needs the timezone when it loads the location, before
    # any resource exists. Invalid settings surface in the runs, with the field's name.
    try:
        return load_settings().timezone
    except SettingsError:
        return "UTC"


SCHEDULE_TIMEZONE = _configured_timezone()
