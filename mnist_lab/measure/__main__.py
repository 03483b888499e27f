"""`python -m mnist_lab.measure training|time-to-accuracy|profile|tuning|real-digits|serving|onnx
…`: see `mnist_lab.measure`."""

import sys

from mnist_lab.measure import (
    onnx,
    profile,
    real_digits,
    serving,
    time_to_accuracy,
    training,
    tuning,
)

SCRIPTS = {
    "training": training.main,
    "time-to-accuracy": time_to_accuracy.main,
    "profile": profile.main,
    "tuning": tuning.main,
    "real-digits": real_digits.main,
    "serving": serving.main,
    "onnx": onnx.main,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SCRIPTS:
        print(
            f"usage: python -m mnist_lab.measure {{{','.join(SCRIPTS)}}} [options]  "
            "(add --help after any of them for its options)",
            file=sys.stderr,
        )
        return 2
    return SCRIPTS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
