"""The benchmark table's bookkeeping (bench/report.py), without running any benchmark: which
targets it calls met, why a missed one is missed, and the rows an ``--only`` run keeps."""

from pathlib import Path

from bench.report import NOT_RUN, WHY, Row, keep_previous, pct, render, verdict


def row(key: str, ours: str, met: str, note: str = "") -> Row:
    return Row(f"{key} a scenario", ours, "base", "2×", "a target", met, [note] if note else [])


def test_percentiles_are_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert (pct(samples, 50), pct(samples, 99), pct(samples, 100)) == (50.0, 99.0, 100.0)
    assert pct([3.0, 1.0, 2.0], 50) == 2.0
    assert pct([7], 99) == 7


def test_a_verdict_names_every_missed_part() -> None:
    assert verdict(True, per_file=True) == "yes"
    assert verdict(True, per_file=False, vs_put=False, vs_sftp=True) == "no (per file, vs put)"
    assert verdict(False) == "no"


def test_the_table_says_why_each_missed_target_is_missed_and_only_those() -> None:
    rows = [row("S1", "3 ms", "yes"), row("S5", "2,000 jobs/s", "no (jobs per s)", "a note")]
    text = render(rows, {"cores (nproc)": "2"}, quick=True, reps="10", elapsed=1.0)
    why = text.split("## Why the targets marked no are missed", 1)[1]
    assert f"- **S5**: {WHY['S5']}" in why
    assert "**S1**" not in why
    assert "- **S5 a scenario**: a note" in text
    assert "| 2 | S5 a scenario | 2,000 jobs/s | base | 2× | a target | no (jobs per s) |" in text


def test_every_scenario_that_can_miss_has_a_why() -> None:
    assert set(WHY) >= {"S1", "S2", "S3", "S4", "S5", "S7", "S8"}
    assert all(len(text) > 80 for text in WHY.values())


def test_an_only_run_keeps_the_other_rows_of_the_last_table(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    first = [row("S1", "3 ms", "yes", "seeded"), row("S2", "8 ms", "no (bytes)")]
    text = render(first, {}, quick=False, reps="30", elapsed=1.0)
    path.write_text(text)

    again = [row("S1", NOT_RUN, "not measured"), row("S2", "7 ms", "no (bytes)")]
    rows, kept = keep_previous(again, path)

    assert [(r.scenario, r.ours, r.notes) for r in rows] == [
        ("S1 a scenario", "3 ms", ["seeded"]),
        ("S2 a scenario", "7 ms", []),
    ]
    assert kept is not None and kept.endswith("full mode (S1)")
