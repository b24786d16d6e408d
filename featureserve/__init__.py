"""featureserve: local features and verified matches as a service."""

__version__ = "0.1.0"
