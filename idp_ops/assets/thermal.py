"""Thermal assets."""
