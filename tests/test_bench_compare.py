"""bench/compare.py's report, from made-up turns: medians, their ratio, exactness."""

from bench.compare import report


def turn(**figures: float) -> dict:
    return {"checked": 10, "exact": 10, **figures}


def test_the_report_gives_each_versions_median_and_their_ratio() -> None:
    turns = {
        "A": [turn(cpu_ms_per_round_trip=v, round_trips_per_s=100) for v in (1.0, 3.0, 2.0)],
        "B": [turn(cpu_ms_per_round_trip=v, round_trips_per_s=200) for v in (1.0, 0.5, 9.0)],
    }
    cpu, trips, exact_a, exact_b = report("s4", turns).splitlines()
    assert (
        cpu.startswith("CPU ms per round trip") and "A          2   B          1   B/A 0.50" in cpu
    )
    assert "B/A 2.00" in trips
    assert "Redis" not in report("s4", turns)  # a figure no turn has is left out
    assert (exact_a, exact_b) == ("A: 30 of 30 answers exact", "B: 30 of 30 answers exact")


def test_a_release_report_shows_the_floor_beside_the_two_versions() -> None:
    turns = {name: [turn(p50_ms=1.0, p99_ms=ms)] for name, ms in (("A", 4), ("B", 2), ("floor", 1))}
    text = report("release", turns)
    assert "B/A 0.50" in text and "floor: 1" in text
    assert text.endswith("floor: 10 of 10 answers exact")
