"""Where the data recorded on real hardware lives (idp_ops_tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "idp_ops_tests" / "fixtures"
