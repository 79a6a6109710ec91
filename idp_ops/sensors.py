"""Sensors: what acts without anyone watching."""

sensors: list = []
