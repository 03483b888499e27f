"""compare: which runs, the table (missing values as "–"), the files, the plots, the run."""

import base64
import io

import pandas as pd
import pytest
from lab_helpers import fake_run, sqlite_store
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist_lab import names
from mnist_lab.cli import main
from mnist_lab.comparison.compare import COLUMNS, PLOTS, compare, select_runs

TINY = {"epochs": 1, "max_train_samples": 300, "max_test_samples": 200, "val_size": 100}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with one real tiny cnn and vit run each in experiment mnist-lab."""
    import os

    from mnist_lab.config import load_config
    from mnist_lab.train import train

    if not os.environ.get("MNIST_DATA_DIR"):
        pytest.skip("MNIST_DATA_DIR is not set: real-MNIST test")
    with sqlite_store(tmp_path_factory.mktemp("compare")) as uri:
        cnn = train(load_config("cnn", TINY)).run_id
        vit = train(load_config("vit", {**TINY, "depth": 1, "dim": 32, "heads": 2})).run_id
        yield {"uri": uri, "cnn": cnn, "vit": vit}


def artifact_paths(client, run_id, path=None):
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_compare_writes_table_files_plots_and_a_comparison_run(trained, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model | test_accuracy |" in printed
    assert trained["cnn"] in printed and trained["vit"] in printed

    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns) == [*COLUMNS, "status"]
    assert sorted(table["model"]) == ["cnn", "vit"]
    row = table.set_index("model").loc["cnn"]
    run = MlflowClient().get_run(trained["cnn"])
    assert row[names.TEST_ACCURACY] == pytest.approx(run.data.metrics[names.TEST_ACCURACY])
    assert row["epochs"] == 1 and row["device"] == "cpu" and row["num_params"] > 1000
    assert (out / "comparison.md").read_text().count("\n") == 4  # header, rule, two rows

    html = (out / "comparison.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOTS)
    assert 'src="plots/' not in html  # self-contained: nothing linked
    for path in PLOTS.values():
        image = Image.open(out / path)
        assert image.size[0] > 300 and image.size[1] > 300
    encoded = html.split("data:image/png;base64,")[1].split('"')[0]
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "PNG"

    client = MlflowClient()
    (comparison,) = client.search_runs(
        [client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id],
        "tags.kind = 'comparison'",
    )
    assert comparison.info.status == "FINISHED"
    assert set(comparison.data.tags["compared_runs"].split(",")) == {trained["cnn"], trained["vit"]}
    logged = artifact_paths(client, comparison.info.run_id)
    assert logged == {"comparison.md", "comparison.csv", "comparison.html", *PLOTS.values()}


def test_missing_metrics_show_as_a_dash_and_plots_still_draw(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "partial")
    fake_run("partial", "alexnet", {names.TEST_ACCURACY: 0.5})  # no time, loss, report, curve
    result = compare(run_ids=[trained["cnn"], *select_ids("partial")], output_dir=tmp_path)
    md = (tmp_path / "comparison.md").read_text()
    alexnet = next(line for line in md.splitlines() if line.startswith("| alexnet"))
    assert alexnet.count("| – ") >= 6  # f1, loss, time, epochs, params, ms, throughput, device
    assert "0.5000" in alexnet
    assert pd.isna(result.table.set_index("model").loc["alexnet", names.TRAIN_TIME_S])
    for path in PLOTS.values():
        assert (tmp_path / path).stat().st_size > 1000


def select_ids(experiment):
    return [run.run_id for _, run in select_runs(experiment)]


def test_selection_latest_best_by_tags_and_tuning_winners(tmp_path):
    with sqlite_store(tmp_path):
        exp = "picks"
        old = fake_run(
            exp, "cnn", {names.TEST_ACCURACY: 0.9, names.BEST_VAL_ACCURACY: 0.7}, start_time=1000
        )
        new = fake_run(
            exp, "cnn", {names.TEST_ACCURACY: 0.8, names.BEST_VAL_ACCURACY: 0.8}, start_time=2000
        )
        vit = fake_run(exp, "vit", {names.TEST_ACCURACY: 0.7}, {"note": "x"}, start_time=1500)
        fake_run(exp, "vit", {names.TEST_ACCURACY: 0.99}, start_time=3000, status="FAILED")
        trial = {names.TAG_STUDY_NAME: "s1"}
        t1 = fake_run(exp, "cnn", {names.BEST_VAL_ACCURACY: 0.95}, trial, start_time=4000)
        fake_run(exp, "cnn", {names.BEST_VAL_ACCURACY: 0.5}, trial, start_time=5000)

        def picked(**kwargs):
            return {label: run.run_id for label, run in select_runs(exp, **kwargs)}

        assert picked() == {"cnn": new, "vit": vit}  # latest finished, trials left out
        assert picked(best_by=names.TEST_ACCURACY) == {"cnn": old, "vit": vit}
        assert picked(best_by=names.TEST_LOSS) == {"cnn": new, "vit": vit}  # none has it: latest
        assert picked(tags={"note": "x"}) == {"vit": vit}
        assert picked(include_tuning=True) == {"cnn": new, "vit": vit, "cnn (tuned: s1)": t1}
        assert set(picked(run_ids=[old, new])) == {f"cnn ({old[:8]})", f"cnn ({new[:8]})"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--best-by", "accuracy"], "unknown metric 'accuracy'; choose one of: train_loss"),
        (["--tag", "novalue"], "tag filter 'novalue': write it as key=value"),
        (["--run-ids", "0123456789abcdef"], "run '0123456789abcdef' is not in the tracking store"),
    ],
)
def test_bad_options_exit_2_with_a_message(mlflow_store, capsys, argv, message):
    assert main(["compare", *argv]) == 2
    assert message in capsys.readouterr().err


def test_no_runs_names_the_experiment_and_how_to_make_runs(mlflow_store, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "empty-one")
    assert main(["compare"]) == 2
    err = capsys.readouterr().err
    assert "no finished train runs to compare in experiment 'empty-one'" in err
    assert "mlflow run . -e train" in err
