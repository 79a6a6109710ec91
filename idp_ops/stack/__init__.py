"""The stack: API keys (secrets), the Compose v2 wrapper, the CIS audit and its gate, deploy and
containment with the latch, the endpoint probe. defs.py: api_keys, compose_audit, stack_deployment,
deploy_job and containment_job."""
