"""Speed and throughput of the service and the models, against OpenCV and in-process calls."""
