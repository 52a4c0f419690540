#!/usr/bin/env python3
"""Writes a synthetic `timestamp,requests` trace with a daily surge: 5 req/s, ramping over 10
minutes at 10:00 UTC to 60 req/s for 3 hours, every day, Poisson counts per minute (seeded).

    scripts/daily-surge-trace.py DAYS SEED > trace.csv
"""
import math
import random
import sys


def poisson(rng, mean):
    if mean > 50:  # the normal approximation, exact enough at these rates
        return max(0, int(rng.gauss(mean, math.sqrt(mean)) + 0.5))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p < limit:
            return k
        k += 1


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
