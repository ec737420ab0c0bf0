"""The rate limiter against Kite's limits, on a fake clock (no sleeping)."""

from __future__ import annotations

from ledger.kite.limiter import KITE_LIMITS, RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def max_in_window(times: list[float], span: float) -> int:
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= span:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_orders_stay_within_10_a_second_400_a_minute_5000_a_day() -> None:
    fake = FakeTime()
    limiter = RateLimiter(KITE_LIMITS, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    times = []
    for _ in range(5200):
        limiter.acquire("orders")
        times.append(fake.now)
    assert max_in_window(times, 1.0) == 10
    assert max_in_window(times, 60.0) == 400
    assert max_in_window(times, 86400.0) == 5000
    assert times[5000] - times[0] >= 86400.0


def test_other_calls_have_their_own_budget() -> None:
    fake = FakeTime()
    limiter = RateLimiter(KITE_LIMITS, margin=0.0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):
        limiter.acquire("orders")
    start = fake.now
    for _ in range(10):
        limiter.acquire("other")
    assert fake.now == start  # orders did not use up the quote/order-book budget
    assert limiter.family_of("place_order") == "orders"
    assert limiter.family_of("order_history") == "other"


def test_back_off_after_429() -> None:
    fake = FakeTime()
    limiter = RateLimiter(KITE_LIMITS, clock=fake.clock, sleep=fake.sleep)
    limiter.back_off("orders", 2.5)
    start = fake.now
    limiter.acquire("orders")
    assert fake.now - start >= 2.5
