"""The measure scripts: they print the figures results/ holds, from real MLflow runs
(`make measure ARGS="<script> ..."`, or `python -m mnist_lab.measure <script> ...`).

- `training [SCENARIO ...]`: the speed/accuracy scenarios of each model;
- `time-to-accuracy`: every model timed to the lab's accuracy beside a reference recipe;
- `profile --config FILE`: where a training step's time goes, by operator (no MLflow run);
- `tuning`: a tuning study's speed;
- `real-digits`: the models on font-rendered photos of digits (data/font_digits.py);
- `serving`: `mlflow models serve` under concurrent clients and malformed payloads;
- `onnx`: a run's ONNX model's size, and onnxruntime's speed beside the pyfunc's;
- `cleaning`: the cost per digit of the cleaning every digit gets (data/cleaning.py);
- `off-centre`: models on the same digits with and without the cleaning (shifts, MNIST-C,
  fonts, handwriting), paired;
- `sources-figure`: per source, digits as given, as seen after cleaning, and as read.
- `onnx-exporters`: torch's two ONNX exporters' export time, answers and onnxruntime speed;
- `constraints`: the share of a CNN study's trials within a budget, with and without
  `--constraint`;
- `tracking-outage`: two runs side by side, one through an outage of its tracking server.

Figures are printed, never asserted in tests. It may import every layer except the CLI.
"""
