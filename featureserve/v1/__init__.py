"""Generated gRPC stubs of ``proto/featureserve/v1`` (written by the build; see ``proto/generate.py``)."""
