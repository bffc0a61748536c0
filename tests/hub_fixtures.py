"""Shared fixtures for the Hub tests: the loopback Hub stand-in wired into ``huggingface_hub``."""

from __future__ import annotations

import pytest

from hub_server import HubStandIn


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """A running stand-in; ``huggingface_hub`` is pointed at it for the whole session.

    ``HF_ENDPOINT`` is read once, when ``huggingface_hub.constants`` is imported, and another test
    may have imported it already, so the two module constants built from it are patched too
    (both are read at call time by ``hf_hub_url`` and ``HfApi``).
    """
    server = HubStandIn(tmp_path_factory.mktemp("hub"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", server.url)
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        mp.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        from huggingface_hub import constants

        mp.setattr(constants, "ENDPOINT", server.url)
        mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server
    server.close()


@pytest.fixture
def offline(monkeypatch):
    """``HF_HUB_OFFLINE=1`` as huggingface_hub sees it (it reads the variable at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
