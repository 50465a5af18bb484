"""Generated documents match their generators."""

from pathlib import Path

from pipelines import storage_table

ROOT = Path(__file__).resolve().parents[1]


def test_study_setting_is_over_1000x_smaller_than_full_hidden_states():
    study = [r for r in storage_table.rows() if "magnitude:0.1" in r["spec"]]
    assert len(study) == 4  # two teachers × float16/int8
    assert all(r["ratio"] >= 1000 for r in study), [(r["teacher"], r["dtype"], r["ratio"]) for r in study]


def test_committed_storage_table_is_the_generated_one():
    assert (ROOT / "docs" / "storage.md").read_text() == storage_table.markdown(storage_table.rows())


def test_augmentation_doc_quotes_the_committed_results():
    import json

    from pipelines import augmentation

    table = augmentation.markdown(json.loads((ROOT / "docs" / "augmentation" / "results.json").read_text()))
    assert (ROOT / "docs" / "augmentation" / "results.md").read_text() == table
    assert table in (ROOT / "docs" / "augmentation.md").read_text()


def test_tasks_doc_tables_are_the_committed_results():
    from pipelines import tasks

    rows = tasks._rows()
    for task in ("regression", "ner"):
        for student in ("small3", "tiny4"):
            seeds = {r["seed"] for r in rows if r["task"] == task and r["student"] == student}
            assert len(seeds) >= 2, (task, student)  # every setting of the table with 2 seeds at least
    tables = tasks.DOC.read_text().split(tasks.MARK)[1].split(tasks.END)[0]
    assert tables == tasks.report(rows)  # python -m pipelines.tasks --report rewrites them
