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
