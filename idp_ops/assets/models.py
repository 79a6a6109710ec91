"""Models assets."""
