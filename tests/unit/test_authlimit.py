"""Failed authentications per source (transport/authlimit.py)."""

from macula.transport.authlimit import FailedAuth


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_source_past_its_limit_is_blocked_until_its_window_ends():
    clock = Clock()
    fa = FailedAuth(limit=2, window=60.0, clock=clock)
    assert not fa.blocked("1.2.3.4")
    fa.failed("1.2.3.4")
    assert not fa.blocked("1.2.3.4")
    fa.failed("1.2.3.4")
    assert fa.blocked("1.2.3.4") and not fa.blocked("5.6.7.8")  # others unaffected
    clock.t = 59.9
    assert fa.blocked("1.2.3.4")
    clock.t = 60.0
    assert not fa.blocked("1.2.3.4") and len(fa) == 0           # a new window
    assert (fa.failures, fa.refused) == (2, 2)


def test_the_table_is_bounded_oldest_first():
    fa = FailedAuth(limit=1, window=60.0, max_sources=3, clock=Clock())
    for i in range(5):
        fa.failed(f"10.0.0.{i}")
    assert len(fa) == 3 and not fa.blocked("10.0.0.0") and fa.blocked("10.0.0.4")
