"""Overload, soak and fuzzing of real servers on loopback."""
