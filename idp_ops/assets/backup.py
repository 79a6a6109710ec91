"""Backup assets."""
