"""Alerts for what runs unattended: the shared sink, failed runs, dead-man windows, a dead daemon."""
