"""The DuckDB history file: one schema with its migrations, short-lived connections, and a
writer that inserts by column name (database.py)."""
