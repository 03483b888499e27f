"""`python -m mnist_lab.measure all|training|time-to-accuracy|profile|tuning|real-digits|serving|
onnx|calibration|cleaning|off-centre|sources|sources-figure|onnx-exporters|constraints|
tracking-outage|system-metrics …`:
see `mnist_lab.measure`."""

import importlib
import sys

# Script name → its module in mnist_lab.measure, imported only when run (each pulls in torch).
SCRIPTS = {
    "all": "regenerate",
    "training": "training",
    "time-to-accuracy": "time_to_accuracy",
    "profile": "profile",
    "tuning": "tuning",
    "real-digits": "real_digits",
    "serving": "serving",
    "onnx": "onnx_speed",
    "calibration": "error_rates",
    "cleaning": "cleaning_cost",
    "off-centre": "off_centre",
    "sources": "source_comparison",
    "sources-figure": "sources_figure",
    "constraints": "constraints",
    "onnx-exporters": "onnx_exporters",
    "tracking-outage": "tracking_outage",
    "system-metrics": "system_metrics",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SCRIPTS:
        print(
            f"usage: python -m mnist_lab.measure {{{','.join(SCRIPTS)}}} [options]  "
            "(add --help after any of them for its options)",
            file=sys.stderr,
        )
        return 2  # usage, as argparse's
    script = importlib.import_module(f"mnist_lab.measure.{SCRIPTS[argv[0]]}")
    return script.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
