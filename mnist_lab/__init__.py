"""mnist-lab: experiment-tracked computer vision on MNIST."""

__version__ = "0.1.0"
