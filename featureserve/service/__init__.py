"""The featureserve service: settings, errors, metrics, the worker pool and the APIs."""
