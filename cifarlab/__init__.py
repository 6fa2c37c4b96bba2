"""cifarlab: CIFAR-scale image classification with PyTorch and Hugging Face Accelerate."""

__version__ = "0.1.0"
