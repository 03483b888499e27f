"""The data layer: MNIST's IDX files, the train/val/test splits, batches and scenes.

`mnist` reads and checks the four IDX files and makes the stratified, seeded splits; `loader`
draws batches by index from device-resident tensors and augments them on the device; `scenes`
renders the detector's multi-digit canvases; `images` turns a user's image files into MNIST-like
digits. It may import only `mnist_lab.errors` and `mnist_lab.names` (and torch, numpy, PIL).
"""
