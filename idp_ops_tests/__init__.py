import pytest

# The shared harness (idp_ops_harness) holds asserts (stand-ins, harnesses) that used to sit in test modules:
# pytest rewrites them as it does the tests', so a failing one still explains itself.
pytest.register_assert_rewrite("idp_ops_harness")
