"""A tiny sweep end to end: tables and plots written, a rerun skips finished points."""

import pyarrow.parquet as pq

from pipelines import ablate


def test_tiny_sweep_writes_tables_and_plots_and_resumes(tiny_teacher, toy_dir, tmp_path, capsys):
    out, work = tmp_path / "ablations", tmp_path / "work"
    common = [
        "--data",
        toy_dir,
        "--teacher",
        tiny_teacher,
        "--out",
        str(out),
        "--workdir",
        str(work),
        "--seeds",
        "0",
        "--max-length",
        "32",
    ]
    assert ablate.main(["baselines", *common]) == 0
    assert ablate.main(["width", *common, "--values", "0.5"]) == 0
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 3 + 4  # baselines + (random, uniform, magnitude at 0.5, and all dims)
    by_point = {r["point"]: r for r in rows}
    assert by_point["no distillation"]["bytes_per_example"] == 0 and by_point["no distillation"]["fraction_kept"] == 0
    assert by_point["full HSK"]["fraction_kept"] == 1.0
    assert abs(by_point["magnitude:0.5"]["fraction_kept"] - 0.5 * 2 / 3) < 0.02  # 2 of 3 layers, half the elements
    assert by_point["uniform:0.5"]["bytes_per_example"] < by_point["all"]["bytes_per_example"]
    assert all(0 <= r["accuracy"] <= 1 and r["dev_examples"] == 16 for r in rows)
    assert (out / "results.md").read_text().count("\n") == 2 + 7
    assert (out / "width_small3_fraction.png").stat().st_size > 0 and (
        out / "width_small3_bytes.png"
    ).stat().st_size > 0

    capsys.readouterr()
    assert ablate.main(["width", *common, "--values", "0.5"]) == 0
    assert "4 points done, 0 to run" in capsys.readouterr().out
    assert len(pq.read_table(out / "results.parquet")) == 7

    capsys.readouterr()
    assert ablate.main(["baselines", *common, "--pred-epochs", "0.5"]) == 0  # another training length is another row
    assert "0 points done, 3 to run" in capsys.readouterr().out
    assert (
        "| baselines | no distillation | no distillation | small3 | 0+0.5 @ 0/5e-05 | 1 |"
        in (out / "results.md").read_text()
    )


def test_beyond_sweep_runs_attention_value_relation_and_int8_points(tiny_teacher, toy_dir, tmp_path):
    out = tmp_path / "ablations"
    assert (
        ablate.main(
            [
                "beyond",
                "--data",
                toy_dir,
                "--teacher",
                tiny_teacher,
                "--out",
                str(out),
                "--workdir",
                str(tmp_path / "work"),
                "--seeds",
                "0",
                "--max-length",
                "32",
            ]
        )
        == 0
    )
    rows = {r["point"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert len(rows) == 11
    for kind in ("attention", "value relation"):  # no hidden states stored: nothing of the HSK kept
        assert rows[f"{kind} last topk:1"]["fraction_kept"] == 0
        assert rows[f"{kind} last topk:1"]["bytes_per_example"] < rows[f"{kind} last topk:10"]["bytes_per_example"]
    assert rows["hidden last topk:2"]["fraction_kept"] > 0
    assert rows["mapped all int8"]["options"] == "" and rows["magnitude:0.1 ignore"]["options"] == "width_target=ignore"
    assert (out / "beyond_small3_bytes.png").stat().st_size > 0
