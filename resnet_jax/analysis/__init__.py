"""The paper's experiments as analyses (He et al. 2015): each writes PNG figures and a Markdown table.

* :mod:`.degradation`      Fig. 1/4/6, Table 6: plain vs residual nets of increasing depth.
* :mod:`.layer_responses`  Fig. 7: std of each 3x3 layer's response (after BN, before add/ReLU).
* :mod:`.gradient_flow`    norm of the loss gradient w.r.t. each block's input and parameters.
* :mod:`.lesions`          Veit et al. 2016: test error with blocks deleted at test time.
* :mod:`.landscape`        Li et al. 2018: the loss along filter-normalised random directions.
* :mod:`.shortcuts`        Table 3: shortcut options A / B / C (error, parameter count).
* :mod:`.multi_view`       Tables 3/4: center vs ten-crop vs fully-convolutional multi-scale
                           (the ``test_time`` command).
* :mod:`.cli`              ``run_analysis(name, flags)``, called by ``resnet-jax analyze NAME``.

Each analysis computes its rows, then reports them. What they share: :mod:`.recipes` (the training
recipe of a run and the names of nets), :mod:`.inputs` (runs to analyse, initial variables, test
images) and :mod:`.report` (tables, JSON, figures). A trained run is read back with
:func:`resnet_jax.runs.load`.
"""

from resnet_jax.analysis.inputs import image_batch, init_variables, run_dirs
from resnet_jax.analysis.recipes import (
  build_model,
  depth_of,
  describe,
  display_name,
  image_shape_of,
  is_plain,
  model_label,
  recipe,
  resolve_model,
  train,
)
from resnet_jax.analysis.report import (
  markdown_table,
  output_path,
  pct,
  pyplot,
  save_figure,
  write_json,
  write_outputs,
  write_text,
)

__all__ = [
  "build_model",
  "depth_of",
  "describe",
  "display_name",
  "image_batch",
  "image_shape_of",
  "init_variables",
  "is_plain",
  "markdown_table",
  "model_label",
  "output_path",
  "pct",
  "pyplot",
  "recipe",
  "resolve_model",
  "run_dirs",
  "save_figure",
  "train",
  "write_json",
  "write_outputs",
  "write_text",
]
