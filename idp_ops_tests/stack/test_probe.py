import pytest

from idp_ops.stack.probe import ProbeError, probe_endpoint, unauthenticated_status, wait_until_ready
from idp_ops_harness.ports import refusing_port


def test_an_unreachable_endpoint_is_reported_not_raised_as_a_traceback():
    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}"
        assert unauthenticated_status(url, "openai", "m", timeout_s=2) is None
        with pytest.raises(ProbeError, match="unreachable"):
            probe_endpoint("nobody", url, "llamacpp", "m", "key", timeout_s=2)
        with pytest.raises(ProbeError, match="not ready after 1 s"):
            wait_until_ready(url, timeout_s=1)
