"""compare: which runs, the table (missing values as "–"), the files, the plots, the run."""

import base64
import io

import numpy as np
import pandas as pd
import pytest
import torch
from lab_helpers import fake_run, scored_run, sqlite_store
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist_lab import names
from mnist_lab.analysis.calibration import calibration_summary
from mnist_lab.analysis.corruptions import CORRUPTIONS
from mnist_lab.analysis.statistics import MCNEMAR, T_SEEDS_DIGITS, holm
from mnist_lab.cli import main
from mnist_lab.comparison import comparison_figures as compare_plots
from mnist_lab.comparison.compare import PLOTS, columns, compare
from mnist_lab.comparison.groups import select_groups

TINY = {
    "epochs": 1,
    "max_train_samples": 300,
    "max_test_samples": 200,
    "val_size": 100,
    "robustness_samples": 50,
}


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
    assert "| model | n | test_accuracy | test_accuracy_std |" in printed
    assert trained["cnn"] in printed and trained["vit"] in printed

    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns) == [*columns(), "status"]
    assert sorted(table["model"]) == ["cnn", "vit"]
    row = table.set_index("model").loc["cnn"]
    run = MlflowClient().get_run(trained["cnn"])
    for column in (names.TEST_ACCURACY, *NEW_COLUMNS):
        assert row[column] == pytest.approx(run.data.metrics[column])
    assert row["epochs"] == 1 and row["num_params"] > 1000 and row["n"] == 1
    assert row["machine"] == run.data.tags[names.TAG_MACHINE] and "cores" in row["machine"]
    low, high = row[names.TEST_ACCURACY_CI95_LOW], row[names.TEST_ACCURACY_CI95_HIGH]
    assert low < row[names.TEST_ACCURACY] < high  # one run: Wilson's interval over its digits
    assert low == pytest.approx(run.data.metrics[names.TEST_ACCURACY_CI95_LOW])
    md = (out / "comparison.md").read_text()
    assert md.split("\n\n")[0].count("\n") == 3  # header, rule, two rows
    assert "Significance" not in md or "model_a | model_b" in md
    pairs = pd.read_csv(out / "significance.csv")
    assert list(pairs.columns) == [
        "model_a", "model_b", "difference", "ci95_low", "ci95_high", "test", "p_value", "p_holm",
        "verdict", "seed_noise",
    ]  # fmt: skip
    assert len(pairs) == 1 and pairs.loc[0, "test"] == MCNEMAR and not pairs.loc[0, "seed_noise"]

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
    assert logged == {
        "comparison.md", "comparison.csv", "significance.csv", "comparison.html", *PLOTS.values()
    }  # fmt: skip


def test_missing_metrics_show_as_a_dash_and_plots_still_draw(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "partial")
    fake_run("partial", "alexnet", {names.TEST_ACCURACY: 0.5})  # no time, loss, report, curve
    result = compare(run_ids=[trained["cnn"], *select_ids("partial")], output_dir=tmp_path)
    md = (tmp_path / "comparison.md").read_text()
    alexnet = next(line for line in md.splitlines() if line.startswith("| alexnet"))
    assert alexnet.count("| – ") >= 9  # f1, loss, robust, 2 ece, time, epochs, params, ms, …
    assert "0.5000" in alexnet
    assert pd.isna(result.table.set_index("model").loc["alexnet", names.TRAIN_TIME_S])
    for path in PLOTS.values():
        assert (tmp_path / path).stat().st_size > 1000


NEW_COLUMNS = (names.ROBUST_ACCURACY_MEAN, names.TEST_ECE, names.TEST_ECE_CALIBRATED)
# Accuracy of a good MNIST model under each corruption at the default severity, roughly.
CORRUPTION_ACCURACY = dict(
    zip(CORRUPTIONS, (0.97, 0.93, 0.9, 0.91, 0.96, 0.92, 0.93, 0.95, 0.6, 0.85, 0.45, 0.96,
                      0.94, 0.8, 0.7), strict=True)
)  # fmt: skip


def robustness_metrics(quality: float, seed: int) -> dict[str, float]:
    """robust_accuracy_<c> per corruption and their mean, for a model `quality` in [0, 1]."""
    rng = torch.Generator().manual_seed(seed)
    noise = torch.rand(len(CORRUPTIONS), generator=rng) * 0.06 - 0.03
    accuracy = {
        c: min(1.0, max(0.1, base * (0.85 + 0.15 * quality) + float(n)))
        for (c, base), n in zip(CORRUPTION_ACCURACY.items(), noise, strict=True)
    }
    return {
        **{names.robust_accuracy(c): a for c, a in accuracy.items()},
        names.ROBUST_ACCURACY_MEAN: sum(accuracy.values()) / len(accuracy),
    }


def calibration_report(margin: float, overconfidence: float, seed: int) -> dict:
    """A `reports/calibration.json` computed like a real run's, from synthetic logits [N, 10]:
    unit Gaussian noise plus `margin` on the true class, times `margin` (calibrated logits)
    times `overconfidence` (about the temperature the fit finds)."""
    rng = torch.Generator().manual_seed(seed)

    def logits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        targets = torch.randint(0, 10, (n,), generator=rng)
        raw = torch.randn(n, 10, generator=rng)
        raw[torch.arange(n), targets] += margin
        return raw * margin * overconfidence, targets

    return calibration_summary(*logits(1000), *logits(2000)).to_report()


def realistic_run(experiment: str, model: str, quality: float, seed: int) -> str:
    """A fake finished train run with every metric compare shows and a calibration report."""
    accuracy = 0.965 + 0.027 * quality
    report = calibration_report(3.6 + 0.7 * quality, 2.2 - quality, seed)
    metrics = {
        names.TEST_ACCURACY: accuracy,
        names.TEST_F1_MACRO: accuracy - 0.001,
        names.TEST_LOSS: 0.12 - 0.1 * quality,
        names.TRAIN_TIME_S: 30 + 600 * quality,
        **robustness_metrics(quality, seed),
        **{k: report[k] for k in (names.TEST_ECE, names.TEST_ECE_CALIBRATED, names.TEMPERATURE)},
    }
    run_id = fake_run(experiment, model, metrics)
    MlflowClient().log_dict(run_id, report, names.REPORT_CALIBRATION)
    return run_id


@pytest.fixture
def drawn(monkeypatch):
    """The figures compare draws, by plot function name, with the arguments it drew them from."""
    calls = {}
    for name in ("robustness_figure", "reliability_grid_figure"):
        real = getattr(compare_plots, name)

        def spy(labels, data, real=real, name=name):
            calls[name] = (labels, data, real(labels, data))
            return calls[name][2]

        monkeypatch.setattr(compare_plots, name, spy)
    return calls


def test_robustness_and_calibration_columns_and_plots(mlflow_store, tmp_path, drawn):
    cnn_id = realistic_run("mnist-lab", "cnn", quality=0.5, seed=0)
    fake_run("mnist-lab", "faster_rcnn", {names.TEST_ACCURACY: 0.9})  # none of the new metrics
    compare(output_dir=tmp_path)

    table = pd.read_csv(tmp_path / "comparison.csv").set_index("model")
    cnn = MlflowClient().get_run(cnn_id).data.metrics
    for column in NEW_COLUMNS:
        assert table.loc["cnn", column] == pytest.approx(cnn[column])
        assert pd.isna(table.loc["faster_rcnn", column])
    md = (tmp_path / "comparison.md").read_text().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header[header.index(names.TEST_LOSS) + 1 :][:3] == list(NEW_COLUMNS)
    rcnn = [c.strip() for c in next(r for r in md if "faster_rcnn" in r).strip("|").split("|")]
    assert [rcnn[header.index(c)] for c in NEW_COLUMNS] == ["–"] * 3
    row = [c.strip() for c in next(r for r in md if "| cnn" in r).strip("|").split("|")]
    assert row[header.index(names.TEST_ECE)] == f"{cnn[names.TEST_ECE]:.4f}"

    page = (tmp_path / "comparison.html").read_text()
    for key in ("robustness", "reliability_diagrams"):
        assert Image.open(tmp_path / PLOTS[key]).size[0] > 300
        assert f'<img alt="{key}" src="data:image/png;base64,' in page

    labels, accuracies, figure = drawn["robustness_figure"]
    assert labels == ["cnn", "faster_rcnn"] and accuracies[1] is None
    assert accuracies[0] == {c: cnn[names.robust_accuracy(c)] for c in CORRUPTIONS}
    (ax,) = figure.axes
    assert len(ax.patches) == len(CORRUPTIONS)  # one bar per corruption, the detector left out
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"cnn (mean {100 * cnn[names.ROBUST_ACCURACY_MEAN]:.1f} %)"
    ]
    labels, reports, figure = drawn["reliability_grid_figure"]
    assert reports[0]["temperature"] == pytest.approx(cnn[names.TEMPERATURE]) and not reports[1]
    (ax,) = figure.axes  # one diagram: the detector has no calibration report
    assert ax.get_title().startswith("cnn\nECE ") and "after temperature scaling" in ax.get_title()


def test_new_plots_without_any_data_say_so():
    for figure, text in (
        (compare_plots.robustness_figure(["a"], [None]), "no run has robustness metrics"),
        (compare_plots.reliability_grid_figure(["a"], [None]), "no run has a calibration report"),
    ):
        assert [t.get_text() for t in figure.axes[0].texts] == [text]


def select_ids(experiment):
    return [run_id for group in select_groups(experiment) for run_id in group.run_ids]


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
            return {group.label: group.newest.run_id for group in select_groups(exp, **kwargs)}

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
def test_bad_options_exit_1_with_a_message(mlflow_store, capsys, argv, message):
    assert main(["compare", *argv]) == 1
    assert message in capsys.readouterr().err


def test_no_runs_names_the_experiment_and_how_to_make_runs(mlflow_store, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "empty-one")
    assert main(["compare"]) == 1
    err = capsys.readouterr().err
    assert "no finished train runs to compare in experiment 'empty-one'" in err
    assert "mlflow run . -e train" in err


def test_a_run_pair_gets_the_mcnemar_p_value_worked_by_hand(mlflow_store, tmp_path, capsys):
    # On 80 digits: 10 only the cnn gets right, 3 only the vit, 60 both, 7 neither.
    # Exact McNemar: p = 2 · P(X <= 3), X ~ Bin(13, ½) = 756 / 8192 (0.0923): a tie.
    cnn = np.array([True] * 10 + [False] * 3 + [True] * 60 + [False] * 7)
    vit = np.array([False] * 10 + [True] * 3 + [True] * 60 + [False] * 7)
    ids = [scored_run("cnn", cnn), scored_run("vit", vit)]
    assert main(["compare", "--run-ids", ",".join(ids), "--output-dir", str(tmp_path)]) == 0
    (pair,) = pd.read_csv(tmp_path / "significance.csv").itertuples()
    assert (pair.model_a, pair.model_b, pair.test) == ("cnn", "vit", MCNEMAR)
    assert pair.p_value == pytest.approx(756 / 8192) and pair.p_holm == pytest.approx(756 / 8192)
    assert pair.difference == pytest.approx(7 / 80) and pair.ci95_low <= 0 < pair.ci95_high
    assert pair.verdict == "tie" and not pair.seed_noise
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("model")
    assert table["rank"].isna().all()  # single runs: their configurations cannot be ranked
    out = capsys.readouterr().out
    assert "McNemar exact (digits only; seed noise unmeasured)" in out


def test_single_runs_that_differ_on_their_digits_are_not_ranked_as_configurations(
    mlflow_store, tmp_path
):
    # 30 digits only the cnn gets right, 2 only the vit: p < 0.001, a real difference between
    # these two runs, which says nothing about another seed of either.
    cnn = np.array([True] * 30 + [False] * 2 + [True] * 60)
    vit = np.array([False] * 30 + [True] * 2 + [True] * 60)
    ids = [scored_run("cnn", cnn), scored_run("vit", vit)]
    result = compare(run_ids=ids, output_dir=tmp_path)
    (pair,) = result.significance.itertuples()
    assert pair.p_holm < 0.001 and pair.ci95_low > 0
    assert pair.verdict.startswith("cnn's run better on these digits; seed noise unmeasured")
    assert result.table["rank"].isna().all()


def test_seed_groups_get_intervals_over_seeds_and_digits_ranks_and_holm(
    mlflow_store, tmp_path, drawn
):
    rng = np.random.default_rng(0)
    ids = []
    for model, accuracy in (("cnn", 0.99), ("alexnet", 0.985), ("vit", 0.90)):
        for seed in range(3):
            ids.append(scored_run(model, rng.random(2000) < accuracy + 0.003 * seed, seed))
    scored_run("vit", rng.random(2000) < 0.5, seed=0, lr="0.1")  # another configuration
    result = compare(run_ids=ids, output_dir=tmp_path)

    table = result.table.set_index("model")
    assert list(table.index) == ["cnn", "alexnet", "vit"] and list(table["n"]) == [3, 3, 3]
    groups = select_groups("mnist-lab", run_ids=ids)
    for group in groups:
        row = table.loc[group.label]
        correct = np.stack([r.metrics[names.TEST_ACCURACY] for r in group.runs])
        assert row[names.TEST_ACCURACY] == pytest.approx(correct.mean())
        assert row[names.TEST_ACCURACY_CI95_LOW] < row[names.TEST_ACCURACY]
        assert row[names.TEST_ACCURACY_CI95_HIGH] > row[names.TEST_ACCURACY]
        assert len(row["run_ids"].split(",")) == 3
    pairs = result.significance.set_index(["model_a", "model_b"])
    assert set(pairs["test"]) == {T_SEEDS_DIGITS} and pairs["seed_noise"].all()
    assert list(pairs["p_holm"]) == pytest.approx(list(holm(list(pairs["p_value"]))))
    assert pairs.loc[("cnn", "vit"), "p_holm"] < 0.05 < pairs.loc[("cnn", "alexnet"), "p_holm"]
    assert list(table["rank"]) == [1, 1, 2]  # cnn and alexnet cannot be told apart; vit can
    assert pairs.loc[("cnn", "vit"), "verdict"] == "cnn better"
    assert Image.open(tmp_path / PLOTS["significance"]).size[1] >= 300
