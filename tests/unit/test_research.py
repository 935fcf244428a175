"""The studies in research/: each is a question's folder (its experiment files, their committed
reports and a README), and each file still names the run folders its report was made from, so
`decoder report research/<question>/<name>.yaml --out research/<question>` finds them again."""

from __future__ import annotations

import csv

import pytest
from tinyconf import ROOT

from decoder.config import read_yaml
from decoder.run_ids import run_ids
from decoder.experiments import load_experiment

STUDIES = sorted(p for p in (ROOT / "research").glob("*/*.yaml"))
GRIDS = [p for p in STUDIES if "search" not in read_yaml(p)]
# Reports made before a default the file does not pin changed: their points resolve to other
# configs today, so their folders cannot be named from the file (their README says so).
UNREPRODUCIBLE = {"recipe-slow"}


def test_every_question_has_a_readme_saying_question_answer_machine_command():
    for folder in sorted(p for p in (ROOT / "research").iterdir() if p.is_dir()):
        text = (folder / "README.md").read_text()
        for part in ("Question", "Answer", "Machine", "Command"):
            assert f"**{part}" in text, f"research/{folder.name}/README.md lacks '{part}'"


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
def test_a_moved_study_still_names_the_runs_of_its_committed_report(path):
    summary = path.parent / path.stem / "summary.csv"
    if not summary.exists():
        pytest.skip(f"{path.stem} has no committed report (never run)")
    with summary.open() as f:
        reported = {row["run_id"] for row in csv.DictReader(f)}
    ids = {i for point in load_experiment(path).points for i in run_ids(point.config)}
    if path.stem in UNREPRODUCIBLE:
        assert not (reported & ids) and "cannot be re-reported" in (path.parent / "README.md").read_text()
        return
    assert reported and reported <= ids, f"{path.stem}: {sorted(reported - ids)} are not points of the file"


def test_load_records_finds_a_run_made_under_an_earlier_id(tmp_path):
    # research/muon's runs were made while training.muon_momentum existed and data.fallback did not:
    # their folders carry that era's id, which the report must still find.
    from decoder.runs import RunDir, load_records

    path = ROOT / "research" / "muon" / "muon-fast.yaml"
    (point,) = load_experiment(path).points
    current, earlier = run_ids(point.config)[:2]  # then the ids of the eras of keys added after data.fallback
    reported = {row["run_id"] for row in csv.DictReader((path.parent / "muon-fast" / "summary.csv").open())}
    assert reported == {earlier}
    run = RunDir(tmp_path / "muon-fast" / earlier)
    run.path.mkdir(parents=True)
    run.summary_file.write_text('{"status": "completed"}')
    (record,) = load_records([path], runs_dir=tmp_path)[0]
    assert record.status == "completed" and record.run_dir == run.path
