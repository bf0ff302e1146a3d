"""The conversion-table builder on a tiny model: rows, resume, Markdown index."""
import pandas as pd

from ttfs_brian import data, table, training


def test_table_builder_on_tiny_model(tmp_path):
    models_dir = tmp_path / "models"
    training.train("digits_net", data.digits(), epochs=1, max_batches=8, out_dir=models_dir)
    out = tmp_path / "table.csv"
    result = table.build_table(out, models=[("digits", "digits_net")], engines=["analytic"], models_dir=models_dir,
                               n_test=60)
    assert list(result.columns) == table.COLUMNS
    assert len(result) == 2 and set(result["variant"]) == {"exact", "sparse"}
    unflagged = result[result["flagged"] == 0]
    assert (unflagged["agreement"] == 1.0).all() and (unflagged["snn_acc"] == unflagged["relu_acc"]).all()
    assert (result["max_abs_dt_ms"] < 1e-9).all()
    assert (result["relu_macs_per_image"] == 8 * 8 * 8 * 9 + 32 * 128 + 10 * 32).all()
    # resume: a second call measures nothing new and keeps the rows
    before = out.read_text()
    again = table.build_table(out, models=[("digits", "digits_net")], engines=["analytic"], models_dir=models_dir,
                              n_test=60)
    assert out.read_text() == before and len(again) == 2
    index = table.results_index(pd.read_csv(out), [tmp_path / "figures" / "raster.png"], tmp_path / "README.md",
                                commands=["python experiments/conversion_table.py"])
    text = index.read_text()
    assert "| digits " in text and "figures/raster.png" in text and "conversion_table.py" in text


def test_rows_are_keyed_by_all_parameters_and_damaged_rows_recomputed(tmp_path):
    models_dir = tmp_path / "models"
    training.train("digits_net", data.digits(), epochs=1, max_batches=4, out_dir=models_dir)
    out = tmp_path / "table.csv"
    kwargs = dict(models=[("digits", "digits_net")], variants=["sparse"], engines=["analytic"], models_dir=models_dir)
    first = table.build_table(out, n_test=20, **kwargs)
    assert first["n_test"].tolist() == [20]
    # another n_test is another row, not the old one reused
    second = table.build_table(out, n_test=30, **kwargs)
    assert sorted(second["n_test"].tolist()) == [20, 30]
    # a run killed while writing leaves a line cut short: it is dropped and measured again
    text = out.read_text()
    out.write_text(text[: len(text) - 25])
    third = table.build_table(out, n_test=30, **kwargs)
    assert sorted(third["n_test"].tolist()) == [20, 30]
    assert not third.drop(columns=["dt"]).isna().any().any()  # (dt is not applicable to the analytic engine)
    assert out.read_text().count("\n") == 3  # header + two complete rows
