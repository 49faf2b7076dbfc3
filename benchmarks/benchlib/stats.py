"""
The benchmarks' statistics: each row of a table is the median, the 95th
percentile and the maximum of its samples.
"""

import math
import statistics


def percentile(values, q):
    """
    The q-th percentile with linear interpolation between closest ranks
    (numpy's default): with 10 samples, p95 lies between the 9th and 10th.
    """
    values = sorted(values)
    if not values:
        return None
    position = (len(values) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


def summarize(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None, "min": None, "mean": None}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "max": max(values),
        "min": min(values),
        "mean": statistics.fmean(values),
    }


def ms(seconds):
    return None if seconds is None else seconds * 1000.0


def fmt(value):
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
