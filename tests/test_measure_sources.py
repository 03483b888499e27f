"""`measure sources`: two configurations' runs compared per source, paired on the digits."""

import numpy as np


def test_sources_compares_two_configurations_per_source_paired_on_the_digits():
    """A known truth: the first configuration reads 5 of every 100 digits more than the
    second (the same digits at every seed) on one source and the same digits on the other."""
    from mnist_lab.measure import source_comparison as sources

    rng = np.random.default_rng(0)
    base = rng.random((3, 1000)) < 0.9
    base[:, :50] = False  # 50 digits no seed of the second configuration reads …
    better = base.copy()
    better[:, :50] = True  # … every seed of the first does
    runs = {"handwriting_8px": better, "fonts": base[::-1].copy()}
    against = {"handwriting_8px": base, "fonts": base}
    gain, same = sources.compare(runs, against)
    assert gain["source"] == "handwriting_8px" and gain["n"] == 1000
    assert gain["difference"].startswith("+5.00 [") and gain["verdict"] == "better"
    assert gain["p_value"] < 0.01
    assert same["difference"].startswith("+0.00 [") and same["verdict"] == "tie"


def test_sources_refuses_a_run_without_a_logged_model(mlflow_store, capsys):
    import mlflow

    from mnist_lab.measure import source_comparison as sources

    with mlflow.start_run() as run:
        pass
    ids = [run.info.run_id]
    assert sources.main(["--runs", *ids, "--against", *ids]) == 1
    assert f"run {ids[0]} logged no model 'model'" in capsys.readouterr().err
