"""The harness the tests and the benchmarks share: settings files, free ports, stand-ins for
what cannot run here (an NVIDIA GPU's NVML, an LLM server's edge cases), the Dagster
processes as an operator starts them, a second dockerd, the thermal end-to-end driver.

Not product code (nothing under idp_ops/ imports it) and not tests (no test lives here).
"""
