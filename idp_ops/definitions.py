"""The one place the code location's Definitions are assembled."""

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from idp_ops.backup import defs as backup
from idp_ops.models import defs as models
from idp_ops.physics import defs as physics
from idp_ops.reports import defs as reports
from idp_ops.stack import defs as stack
from idp_ops.thermal import defs as thermal
from idp_ops.validation import defs as validation
from idp_ops.jobs import jobs
from idp_ops.resources import SettingsResource, StackResource
from idp_ops.schedules import schedules
from idp_ops.sensors import sensors

ASSET_MODULES = [stack, validation, models, backup, thermal, physics, reports]

settings_resource = SettingsResource()

defs = Definitions(
    assets=load_assets_from_modules(ASSET_MODULES),
    asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
    jobs=jobs,
    schedules=schedules,
    sensors=sensors,
    resources={
        "settings": settings_resource,
        "stack": StackResource(settings=settings_resource),
    },
)
