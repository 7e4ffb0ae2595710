"""resnet_jax: deep residual networks (He et al., 2015) in JAX/Flax."""

__version__ = "0.1.0"
