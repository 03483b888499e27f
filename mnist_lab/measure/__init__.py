"""The measure scripts: they measure on this machine and, with `--output-dir results`, write
the tables of results/ (each a Markdown page and a CSV, through `results_table.py`), from real
MLflow runs or their own timings (`python -m mnist_lab.measure <script> ...`).

- `all [--quick]`: every script below that writes a table, one after another, then `report`
  (`make results`);
- `training [SCENARIO ...]`: the speed/accuracy scenarios of each model;
- `time-to-accuracy`: every model timed to a reference accuracy beside a reference recipe;
- `profile --config FILE`: where a training step's time goes, by operator (no MLflow run);
  `--compare-precision`: a step in fp32 and in bf16 autocast;
- `tuning`: a tuning study's speed, with and without pruning;
- `constraints`: the share of a CNN study's trials within a budget, with and without
  `--constraint`;
- `serving`: `mlflow models serve` under concurrent clients and malformed payloads;
- `onnx`: a run's ONNX model's size, and onnxruntime's speed beside the pyfunc's;
- `onnx-exporters`: torch's two ONNX exporters' export time, answers and onnxruntime speed;
- `cleaning`: the cost per digit of the cleaning every digit gets (data/cleaning.py);
- `calibration`: how often the lab's intervals and tests are wrong (a simulation);
- `real-digits`: a trained run on font-rendered photos of digits (data/font_digits.py);
- `off-centre`: models on the same digits with and without the cleaning, paired;
- `sources`: two configurations' runs on the same digits of every other source, paired;
- `sources-figure`: per source, digits as given, as seen after cleaning, and as read.
- `tracking-outage`: two runs side by side, one through an outage of its tracking server.
- `system-metrics`: `cnn_fast` runs with MLflow's system metrics on and off, alternating.

Figures are printed or written, never asserted in tests. It may import every layer except the
CLI.
"""
