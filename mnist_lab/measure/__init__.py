"""Measurement scripts that print the README's figures from real MLflow runs.

`python -m mnist_lab.measure training [SCENARIO ...]` trains the speed/accuracy scenarios of each
model (`make bench`); `python -m mnist_lab.measure time-to-accuracy` times every model to the
lab's accuracy beside a peer recipe; `python -m mnist_lab.measure profile --config FILE` lists
where a training step's time goes, by operator (no MLflow run: a diagnostic);
`python -m mnist_lab.measure tuning` measures a tuning study. Not to be confused with
`comparison.benchmark`, the lab's table of every model (`mnist-lab benchmark`).
`python -m mnist_lab.measure real-digits` measures the models on font-rendered photos of digits;
`python -m mnist_lab.measure serving` drives `mlflow models serve` with concurrent clients and
malformed payloads; `python -m mnist_lab.measure onnx` sizes a run's ONNX model and times
onnxruntime beside the pyfunc.
Figures are printed, never asserted in tests. It may import every layer except the CLI.
"""
