"""What `robustness` takes, each setting with its default, choices and help (the CLI's flags are
read from here). Imports no torch, so `robustness --help` answers at once."""

from __future__ import annotations

from dataclasses import dataclass

from mnist_lab.names import DEFAULT_SEVERITY
from mnist_lab.settings import setting


@dataclass
class RobustnessOptions:
    run_id: str | None = setting(None, "evaluate this run's logged model")
    model_uri: str | None = setting(None, "or this model, e.g. models:/mnist-cnn@champion")
    samples: int = setting(2000, "test digits per corruption (the first ones of the test set)")
    severities: str = setting(
        "1..5",
        "every severity, as a train run's report (same metric names); a comma list (1,3,5), a "
        f"range, or {DEFAULT_SEVERITY} (MNIST-C's own) alone",
    )
    data_dir: str | None = setting(None, "the folder holding MNIST/raw/ (unset: $MNIST_DATA_DIR)")
    device: str = setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda[:k] or mps")
    seed: int = setting(0, "the corruptions' seed (0: the digits every train run's report sees)")
