"""Text stacks: each module registers itself in ``pali.config.registry.TEXT_STACKS``; its config and
presets live in a torch-free ``*_config`` module beside it. Nothing is imported here: the
registry imports the modules on its first read, and a config loads without them."""
