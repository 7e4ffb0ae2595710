"""The subcommands of ``resnet-jax``, one module each: its flags and its body together.

Each module has ``PURPOSE`` and ``EXAMPLE`` (the front door's overview and help), ``USAGE`` and
``DETAILS`` where they are not the usual ``[--flag=value ...]`` and nothing,
``define_flags(flag_values, args)`` (``args``: its raw arguments, for flags that depend on a
positional, like ``analyze NAME``) and ``run(flag_values, positionals)``. A body raises
``ValueError`` (or :class:`usage.UsageError`) for bad input; ``errors()``, where a module has it,
names the other errors its user can act on. Importing a command loads neither JAX nor TensorFlow:
its body imports what it needs. What several commands share: :mod:`.usage` (refusing bad input),
:mod:`.run_config` (``--config``) and :mod:`.startup` (``--cpu_devices`` and the process start).
The registry, the help and the one way to fail are ``resnet_jax.main``'s.
"""
