"""One default per length: the CLI, the pipeline and ``PaliModel.generate`` agree because each
reads `pali.defaults`, not a literal of its own."""

from __future__ import annotations

import pytest
import torch

import pali
from pali import defaults
from pali.cli import build_parser
from pali.cli.common import load_pipeline
from pali.generation import GenerationConfig
from pali.processing.processor import ProcessorConfig


def test_cli_pipeline_and_generate_share_one_max_new_tokens(capsys):
    args = build_parser().parse_args(["caption", "photo.jpg"])
    cli_pipe = load_pipeline(args)
    model, processor = cli_pipe.model, cli_pipe.processor
    values = {
        "cli option": args.max_new_tokens,
        "cli pipeline": cli_pipe.generation_config.max_new_tokens,
        "pipeline": pali.pipeline(model, processor).generation_config.max_new_tokens,
        "generate": GenerationConfig().max_new_tokens,
    }
    assert set(values.values()) == {defaults.MAX_NEW_TOKENS}, values
    size = model.config.vision.image_size
    tokens = model.generate(torch.zeros(1, 3, size, size), torch.tensor([[5, 1]]), eos_token_id=-1)
    assert tokens.shape[1] == defaults.MAX_NEW_TOKENS  # what generate does, not only what it says
    with pytest.raises(SystemExit):
        build_parser().parse_args(["caption", "--help"])
    assert f"default: {defaults.MAX_NEW_TOKENS}" in capsys.readouterr().out


def test_processor_lengths_come_from_the_same_module():
    config = ProcessorConfig()
    assert (config.max_length, config.max_target_length) == (defaults.MAX_PROMPT_LENGTH, defaults.MAX_TARGET_LENGTH)
