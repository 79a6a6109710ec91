"""The thermal watch: telemetry sources (NVML and hwmon in telemetry.py, CSV replay in replay.py, the
Sample type in samples.py), the pure policy, one watch
tick shared by the sensor and the guard, the spool and its DuckDB store. defs.py: thermal_log,
thermal_ingest_job and its schedule, thermal_sensor."""
