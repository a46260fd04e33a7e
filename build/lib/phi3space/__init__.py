"""phi3space: fine-tune Phi-3 with LoRA or QLoRA from a web form, a YAML file or the command line."""

__version__ = "0.4.0"  # the one place the version is written (pyproject.toml reads it)
