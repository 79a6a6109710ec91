"""idp-ops, the command line: main.py holds the shared commands and the dispatch,
one module per noun holds the rest. Names, flags, JSON and exit codes are a contract."""

from idp_ops.cli.main import main

__all__ = ["main"]
