"""Schedules: what runs unattended, and when."""

schedules: list = []
