"""The one packaging choice pyproject.toml cannot state: the checkout's configs/ ships inside the
wheel as resnet_jax/configs/, so `resnet-jax train --config=NAME` finds it from an installed wheel
(resnet_jax.train.config.config_file), and site-packages gets no top-level `configs`."""

import setuptools

setuptools.setup(
  packages=[
    *setuptools.find_namespace_packages(include=["resnet_jax*"]),
    "resnet_jax.configs",
  ],
  package_dir={"resnet_jax.configs": "configs"},
)
