"""Benchmarks, run from the repository root as ``python -m benchmarks.<purpose>.<script>``.

``performance/`` times the service and the models against OpenCV and in-process calls; ``reliability/``
overloads, soaks and fuzzes real servers. ``servers.py`` (the server launcher), ``load.py`` (load
generators), ``fuzzing.py`` (hostile inputs) and ``faults.py`` (a model that crashes or hangs on command) are
shared with the tests. Model quality is evaluated by ``python -m training evaluate`` (`training.evaluation`).
Results go to ``benchmarks/results/``.
"""
