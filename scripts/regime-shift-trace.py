#!/usr/bin/env python3
"""Writes a synthetic `timestamp,requests` trace of large diurnal web traffic whose regime shifts:

    scripts/regime-shift-trace.py DAYS SEED > trace.csv

Demand: a daily cycle from 300 req/s at 04:00 UTC to 2,000 req/s at 16:00 (a sinusoid with a
second, evening harmonic), 30 % lower on the two weekend days, with bursty minutes (the mean of
each minute is drawn from a gamma distribution with a 15 % coefficient of variation, then
Poisson counts), seeded. On the middle day at 12:00 the level steps up by 60 % and stays there
(a launch, a migration onto the service); from then on the evening peak also moves an hour
later. A forecaster must notice the new level without being told.
"""
import math
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trace_noise import poisson  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    days, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    start = 1_699_920_000  # a midnight, UTC (a Tuesday)
    shift = (days // 2) * 1440 + 720
    print("timestamp,requests")
    for m in range(days * 1440):
        day, of_day = divmod(m, 1440)
        hour = of_day / 60
        shifted = m >= shift
        evening = 20.0 if not shifted else 21.0
        base = 0.5 - 0.5 * math.cos(2 * math.pi * (hour - 4) / 24)
        second = 0.15 * math.exp(-((hour - evening) ** 2) / 2)
        rps = 300 + 1700 * min(1.0, base + second)
        if (day + 1) % 7 in (4, 5):  # Saturday and Sunday
            rps *= 0.7
        if shifted:
            rps *= 1.6
        mean = rng.gammavariate(1 / 0.15**2, 0.15**2) * rps * 60
        print(f"{start + 60 * m},{poisson(rng, mean)}")


if __name__ == "__main__":
    main()
