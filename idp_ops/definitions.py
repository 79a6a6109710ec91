"""The one place the code location's Definitions are assembled."""

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from idp_ops.assets import backup, models, physics, reports, stack, thermal, validation
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
