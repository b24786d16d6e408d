"""Training data: synthetic posed pairs, real posed image sets and query points."""
