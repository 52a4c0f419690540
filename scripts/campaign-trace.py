#!/usr/bin/env python3
"""Writes a synthetic `timestamp,requests` trace of diurnal web traffic with sudden campaigns,
and the campaigns as a `prescale replay --events` file:

    scripts/campaign-trace.py DAYS SEED EVENTS_FILE [learn|exact] > trace.csv

Demand: 10 req/s at 03:00 UTC rising to 40 req/s at 15:00 (a sinusoid), Poisson counts per
minute (seeded). About one campaign a day at a random time (not before the second day), 1-3
hours long, multiplying demand by 3-5 within two minutes of its start. The events file lists
every campaign with tag `campaign`: `learn` (the default) gives each the effect
`learn_from_tag` (the operator knows when, not how much); `exact` gives each its true factor.
"""
import json
import math
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trace_noise import poisson  # noqa: E402


def main():
    if len(sys.argv) not in (4, 5) or (len(sys.argv) == 5 and sys.argv[4] not in ("learn", "exact")):
        sys.exit(__doc__)
    days, seed, events_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    effect_kind = sys.argv[4] if len(sys.argv) == 5 else "learn"
    rng = random.Random(seed)
    start = 1_699_920_000  # a midnight, UTC
    campaigns = []
    for day in range(1, days):
        begin = day * 1440 + rng.randrange(0, 1440 - 180)
        length = rng.randrange(60, 181)
        factor = round(rng.uniform(3.0, 5.0), 2)
        campaigns.append((begin, begin + length, factor))
    print("timestamp,requests")
    for m in range(days * 1440):
        hour = (m % 1440) / 60
        rps = 25 - 15 * math.cos(2 * math.pi * (hour - 3) / 24)
        for begin, end, factor in campaigns:
            if begin <= m < end:
                rps *= 1 + (factor - 1) * min(1.0, (m - begin + 1) / 2)
        print(f"{start + 60 * m},{poisson(rng, rps * 60)}")
    events = []
    for n, (begin, end, factor) in enumerate(campaigns, 1):
        effect = {"kind": "learn_from_tag"} if effect_kind == "learn" else {"kind": "multiplier", "factor": factor}
        events.append({
            "id": f"campaign-{n}",
            "tag": "campaign",
            "start": start + 60 * begin,
            "end": start + 60 * end,
            "scope": {"kind": "all"},
            "effect": effect,
        })
    with open(events_path, "w") as f:
        json.dump(events, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
