"""The one place the code location's Definitions are assembled."""

from dagster import Definitions

from idp_ops.assets import stack
from idp_ops.jobs import containment_job, deploy_job
from idp_ops.resources import SettingsResource, StackResource

settings_resource = SettingsResource()

defs = Definitions(
    assets=[stack.api_keys, stack.compose_audit, stack.stack_deployment],
    jobs=[deploy_job, containment_job],
    resources={
        "settings": settings_resource,
        "stack": StackResource(settings=settings_resource),
    },
)
