#!/usr/bin/env python3
"""Writes a synthetic `timestamp,requests` trace with a daily surge: 5 req/s, ramping over 10
minutes at 10:00 UTC to 60 req/s for 3 hours, every day, Poisson counts per minute (seeded).

    scripts/daily-surge-trace.py DAYS SEED > trace.csv
"""
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
    start = 1_699_920_000  # a midnight, UTC
    print("timestamp,requests")
    for m in range(days * 1440):
        of_day = m % 1440
        if 600 <= of_day < 610:
            rps = 5 + 55 * (of_day - 600) / 10
        elif 610 <= of_day < 790:
            rps = 60
        else:
            rps = 5
        print(f"{start + 60 * m},{poisson(rng, rps * 60)}")


main()
