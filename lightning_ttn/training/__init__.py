"""Training: the recipe, the LightningModule, callbacks, the one run entry and the CLI.

Import from the submodules (``lightning_ttn.training.recipe``, ``.module``, ``.run``, ...). This
``__init__`` imports nothing, so that the Lightning-free parts (``recipe``, ``record``) can be
read by the report without importing Lightning.
"""
