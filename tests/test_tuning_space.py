"""Search spaces (tuning/space.py, tuning/defaults.py): every shipped space loads and starts
from its model's defaults, and a malformed one names its file, key and problem."""

import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tuning_helpers import TINY_SPACE

from mnist_lab.config import PROJECT_ROOT, load_config
from mnist_lab.errors import ConfigError
from mnist_lab.tuning.space import TUNING_DIR, load_space
from mnist_lab.tuning.study import open_storage, open_study

# --- search spaces -------------------------------------------------------------------------


def shipped_model(path: Path) -> str:
    """The model a shipped space file is for: tuning/timm.yaml serves every timm:<name>."""
    return "timm:resnet18" if path.stem == "timm" else path.stem


@pytest.mark.parametrize("path", sorted(TUNING_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_suggests_valid_configs(path):

    model = shipped_model(path)
    space = load_space(model)
    assert space.path == path
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        overrides = space.suggest(trial)
        load_config(model, {**space.fixed, **overrides})  # raises on a bad combination
        study.tell(trial, 0.0)


def test_every_model_has_a_space():
    from mnist_lab.models import ARCHITECTURES

    spaces = {p.stem for p in TUNING_DIR.glob("*.yaml")}
    assert {entry.search_space for entry in ARCHITECTURES.values()} | {"timm"} <= spaces
    assert load_space("timm:convnext_atto").path == TUNING_DIR / "timm.yaml"
    for model in ("timm_vit", "timm:resnet18"):  # what the issue asked them to tune
        assert {"lr", "weight_decay", "batch_size", "drop_path", "augment"} <= set(
            load_space(model).params
        )


def test_the_front_spaces_load_and_hold_their_models_defaults():
    """tuning/fronts/<model>_*.yaml: the spaces of the README's measured Pareto fronts."""
    from mnist_lab.tuning.defaults import model_defaults

    paths = sorted((TUNING_DIR / "fronts").glob("*.yaml"))
    assert paths
    for path in paths:
        model = path.stem.split("_")[0]
        space = load_space(model, path)
        inside, outside = space.defaults_params(model_defaults(model))
        assert inside and outside == {}, path.name


def test_no_space_file_points_to_a_module_that_does_not_exist():
    for path in TUNING_DIR.rglob("*.yaml"):
        for module in re.findall(r"mnist_lab/[\w/]+\.py", path.read_text()):
            assert (PROJECT_ROOT / module).is_file(), f"{path.name}: {module}"


@pytest.mark.parametrize("path", sorted(TUNING_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_first_trial_of_every_shipped_space_is_its_models_defaults(tmp_path, path):
    """Each study enqueues experiments/<model>.yaml's values as trial 0; in the shipped spaces
    every default lies inside, so trial 0's params equal them."""
    from mnist_lab.tuning.defaults import ATTR_DEFAULTS, enqueue_defaults, model_defaults

    model = shipped_model(path)
    space = load_space(model)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    study = open_study(storage, "s", space, {})
    assert enqueue_defaults(url, storage, study, space, {"pid": 1})
    assert enqueue_defaults(url, storage, study, space, {"pid": 2}) is None  # once
    (first,) = study.get_trials()
    assert first.state == TrialState.WAITING and first.user_attrs[ATTR_DEFAULTS]
    defaults = model_defaults(model)
    trial = study.ask()  # what a worker gets: the enqueued trial, its params fixed
    assert trial.number == 0
    suggested = space.suggest(trial)
    assert suggested == {name: defaults[name] for name in suggested}
    assert set(suggested) >= {n for n in space.params if "when" not in space.params[n]}
    assert first.user_attrs["defaults_outside_space"] == {}


def test_conditional_parameters():
    vit = load_space("vit")
    vgg = load_space("vgg16")
    vit_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    vgg_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_frozen, seen_native = False, False
    for _ in range(40):
        trial = vit_study.ask()
        chosen = vit.suggest(trial)
        assert chosen["dim"] % chosen["heads"] == 0
        assert f"heads|dim={chosen['dim']}" in trial.params  # one Optuna name per case
        vit_study.tell(trial, 0.0)
        trial = vgg_study.ask()
        native = vgg.suggest(trial)
        if native["input_size"] == 32:
            assert "weights" not in native and "freeze_features" not in native
            seen_native = True
        else:
            seen_frozen |= "freeze_features" in native
        vgg_study.tell(trial, 0.0)
    assert seen_frozen and seen_native


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("params: [1, 2", "", "not valid YAML"),
        ("fixed: {}\n", "params", "must map settings to specs"),
        ("bogus: 1\nparams: {lr: {type: float, low: 1, high: 2}}", "bogus", "unknown section"),
        ("params: {lr: {type: normal, low: 1, high: 2}}", "params.lr.type", "got 'normal'"),
        ("params: {lr: {type: float, low: 0.1, high: 0.01}}", "params.lr", "must be < high"),
        ("params: {lr: {type: float, low: 0, high: 1, log: true}}", "params.lr.low", "> 0"),
        ("params: {lr: {type: float, low: x, high: 1}}", "params.lr.low", "'x' is not a float"),
        ("params: {lr: {type: float, high: 1}}", "params.lr.low", "is missing"),
        ("params: {lr: {type: float, low: 1, high: 2, lo: 3}}", "params.lr", "unknown keys"),
        ("params: {width: {type: categorical, choices: []}}", "params.width.choices", "list"),
        ("params: {patch_size: {type: int, low: 1, high: 2}}", "patch_size", "not a setting"),
        ("fixed: {epochs: 0}\nparams: {lr: {type: float, low: 1, high: 2}}", "fixed", "epochs"),
        (
            "params: {depth: {depends_on: width, cases: {8: {type: int, low: 1, high: 2}}}}",
            "params.depth.depends_on",
            "'width' is not an earlier parameter",
        ),
        (
            "params: {dropout: {type: float, low: 0, high: 0.5, when: {width: 8}}}",
            "params.dropout.when",
            "'width' is not an earlier parameter",
        ),
        (
            "params: {lr: {type: float, low: 1, high: 2}}\npruner: {asha: {}}",
            "pruner.asha",
            "not one of",
        ),
    ],
)
def test_malformed_space_names_file_key_and_problem(tmp_path, text, key, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_space("cnn", path)
    message = str(err.value)
    assert str(path) in message and key in message and problem in message


def test_objectives_pick_and_pruner_are_read_as_documented():
    from mnist_lab.tuning.objectives import parse_objectives

    single = parse_objectives(None, None, "auto")
    assert single.chosen == ("val_accuracy",) and single.pruner == "hyperband" and single.prunable
    two = parse_objectives(" val_accuracy, inference_ms_per_image ", None, "auto")
    assert two.chosen == ("val_accuracy", "inference_ms_per_image") and two.multi
    assert two.directions == ["maximize", "minimize"] and two.pruner == "none"
    assert two.measured == ("inference_ms_per_image",)
    robust = parse_objectives("val_robust_accuracy", "val_robust_accuracy", "none")
    assert not robust.prunable and robust.measured == ("val_robust_accuracy",)
    # A pick reads metrics the objectives do not: the trials measure them too.
    picked = parse_objectives(None, "val_accuracy, inference_ms_per_image<=0.1", "auto")
    assert picked.measured == ("inference_ms_per_image",) and picked.pruner == "hyperband"
    budgets = parse_objectives("num_params,val_accuracy", "val_accuracy>=0.99", "auto")
    assert budgets.pick.objective == "num_params"  # budgets only: the first objective ranks


def test_a_different_space_under_the_same_name_is_refused(tmp_path, space):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    first = load_space("cnn", space)
    open_study(storage, "s", first, {"max_train_samples": 300})
    open_study(storage, "s", first, {"max_train_samples": 300})  # the same: continues
    other = tmp_path / "other.yaml"
    other.write_text(TINY_SPACE.replace("high: 2}", "high: 3}"))
    with pytest.raises(ConfigError, match="started with another search space"):
        open_study(storage, "s", load_space("cnn", other), {"max_train_samples": 300})
    with pytest.raises(ConfigError, match="--study-name"):
        open_study(storage, "s", first, {"max_train_samples": 1000})
    with pytest.raises(ConfigError, match="started with another search space"):  # objectives
        open_study(storage, "s", first, {"max_train_samples": 300, "objectives": ["num_params"]})
