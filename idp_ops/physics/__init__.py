"""Physics of decode: the formulas (single-stream, batched, hybrid ceilings), the ceilings of
each endpoint and model, the memory-bandwidth probe and its record. defs.py: memory_bandwidth,
throughput_ceilings."""
