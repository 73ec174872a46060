"""Bounds on what a model is given, shared by the body parsers and the fast path."""

MAX_MAGNITUDE = 3.4028234663852886e38
"""Largest |value| a feature may have: float32's range. Tree ensembles compute in
float32 and others overflow to NaN on values near float64's limit, so a larger
value is refused (422) rather than turned into a 500 or a meaningless answer."""
