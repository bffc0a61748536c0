"""Parameter counts of any config, built-in or plugin, without allocating a weight."""

from __future__ import annotations

from ..config.base import Config, ConnectorConfig, PaliConfig, VisionConfig
from ..config.registry import CONNECTORS, TEXT_STACKS, VISION_ENCODERS


def count_parameters(config: Config) -> int:
    """Parameters of what ``config`` builds: from the config's own arithmetic where it has one
    (every built-in tower and the linear connector), otherwise built once on the meta device
    (no memory, no initialisation) and counted."""
    if isinstance(config, PaliConfig):
        return (count_parameters(config.vision) + _connector_parameters(config)
                + count_parameters(config.text))
    try:
        return config.num_parameters()
    except NotImplementedError:
        registry = VISION_ENCODERS if isinstance(config, VisionConfig) else TEXT_STACKS
        return _built_parameters(registry.get(config.kind), config)


def _connector_parameters(config: PaliConfig) -> int:
    connector: ConnectorConfig = config.connector
    try:
        return connector.num_parameters(config)
    except NotImplementedError:
        return _built_parameters(CONNECTORS.get(connector.kind), config)


def _built_parameters(build, config: Config) -> int:
    from ..nn.meta import meta_device  # torch only when something must be built: `pali presets` stays torch-free

    with meta_device():
        module = build(config)
    return sum(t.numel() for t in module.state_dict().values())
