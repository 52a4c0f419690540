"""Seeded Poisson counts for the synthetic trace scripts in this folder."""
import math


def poisson(rng, mean):
    """A Poisson-distributed count with this mean, drawn from `rng` (a `random.Random`)."""
    if mean > 50:  # the normal approximation, exact enough at these rates
        return max(0, int(rng.gauss(mean, math.sqrt(mean)) + 0.5))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p < limit:
            return k
        k += 1
