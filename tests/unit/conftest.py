"""Shared settings for the unit tests.

Hypothesis runs derandomized (the same examples on every run and every machine) and
without per-example deadlines, which would make a slow board or a loaded CI runner
fail a correct test. Set HYPOTHESIS_PROFILE=explore to search with fresh randomness.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("macula", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "macula"))
