"""[`pali.PaliModel`][]: the model of ``pali.models`` with ``from_pretrained``, ``save_pretrained``,
``push_to_hub`` and ``from_unimodal``.

The model code knows nothing of files or the Hub, so the entry points that need both live here,
above them: this module is the higher layer that owns them, and the model class users import is
the one defined here. Each method is the one definition of its operation (name, signature,
documentation) and composes the pieces that do the work: ``pali.hub.resolve`` (a name -> a local
folder), ``pali.io.loading`` (a folder <-> a model), ``pali.hub.card``, ``pali.hub.push`` and
``pali.hub.unimodal``, imported on first use so ``import pali`` does not pull in
``huggingface_hub``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .models.pali import PaliModel as _Architecture

if TYPE_CHECKING:
    from .config import PaliConfig
    from .hub.card import CardInfo


class PretrainedMixin:
    """Loading and saving for [`pali.PaliModel`][] (our layout: config.json + safetensors)."""

    #: Provenance of the weights (tower, source, revision, format, license): set by
    #: ``from_unimodal``, kept through save/load in the safetensors metadata, shown in the card.
    weight_sources: Sequence[dict[str, Any]] = ()
    #: The repo id or folder the model was loaded from, if any.
    name_or_path: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        strict: bool = True,
        torch_dtype: torch.dtype | None = None,
    ):
        """Load a model saved by [`save_pretrained`][pali.PaliModel.save_pretrained], or a
        transformers BLIP-2 / InstructBLIP checkpoint (T5 / mT5 text model), from a folder or a Hub
        repo id.

        Built on the meta device; every tensor's shape and dtype is checked from the safetensors
        headers, then assigned (``load_state_dict(assign=True)``): a tensor already in ``device``
        (default CPU) and ``dtype`` (default: the stored dtype) is the copy-on-write map of the
        file, paged in on first use; another dtype is cast tensor by tensor, so the weights are
        never held twice. Missing or unexpected tensors raise a
        [`pali.CheckpointError`][] listing them; ``strict=False`` warns instead and keeps the
        model's own initialisation for the missing ones. Hub problems (no such repo, revision or
        file, a private repo without ``token``, offline with an empty cache) raise
        [`pali.hub.HubError`][]. ``HF_HUB_OFFLINE=1`` or ``local_files_only`` reads the cache only.

        A BLIP-2 / InstructBLIP / mBLIP checkpoint in safetensors is loaded in place: each
        tensor is renamed, split or transposed as it is read from the mapped shards, and no copy
        is written anywhere. Sharded ``pytorch_model-*.bin`` (read with ``weights_only=True``)
        is converted once into our layout in a cache keyed by its Hub commit
        (``cache_dir/pali-converted`` or ``$PALI_HOME/converted``; a warning says where and how
        big; ``pali cache list`` / ``pali cache clear``), then loaded from there. One whose text
        model is decoder-only (OPT, Vicuna...) raises [`CheckpointError`][pali.CheckpointError]
        before any weight file is fetched or read.

        ``torch_dtype`` is ``dtype``'s older transformers name, accepted so code written for
        transformers runs unchanged.
        """
        from .errors import InputError
        from .hub.resolve import resolve

        if torch_dtype is not None:
            if dtype is not None and dtype != torch_dtype:
                raise InputError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; give one")
            dtype = torch_dtype
        from .io.loading import build_model, load_model

        resolved = resolve(name_or_path, revision=revision, cache_dir=cache_dir,
                           local_files_only=local_files_only, token=token)
        options = dict(source=resolved.label, dtype=dtype, device=device, strict=strict)
        if resolved.plan is None:
            model = load_model(cls, resolved.folder, **options)
        else:  # a transformers checkpoint, read in place through its conversion plan
            model = build_model(cls, resolved.plan.config, resolved.plan.weights(), check=resolved.plan.check, **options)
        if resolved.sources is not None:
            model.weight_sources = resolved.sources
        model.name_or_path = resolved.snapshot.source
        return model

    @classmethod
    def from_unimodal(
        cls,
        preset_or_config: "str | PaliConfig | None" = None,
        *,
        vision: str | Path | None = None,
        text: str | Path | None = None,
        vision_revision: str | None = None,
        text_revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        freeze_vision: bool = True,
    ):
        """A fine-tunable PaLI seeded from public unimodal checkpoints, as the paper did.

        ``vision`` / ``text``: a Hub repo id, a local transformers folder, or a JAX checkpoint
        path. transformers safetensors are read in place; ``.bin``, big_vision ``.npz`` and T5X
        are converted once and cached (keyed by commit hash, or path + size + mtime), with a
        warning saying where and how big.
        Without ``preset_or_config`` the architecture is read from the checkpoints; with a preset
        that has a recipe ([`pali.hub.list_recipes`][]) the missing sources come from the recipe,
        and each checkpoint must have the preset tower's shape. A tower without a source is
        randomly initialised, with a warning. The projection is always fresh; the vision tower is
        frozen unless ``freeze_vision=False``.
        """
        from .hub.unimodal import seed_from_towers

        model = seed_from_towers(
            cls, preset_or_config, {"vision": (vision, vision_revision), "text": (text, text_revision)},
            fetch_options=dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token),
            dtype=dtype, device=device,
        )
        return model.freeze_vision(freeze_vision)

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        max_shard_size: int | str = "5GB",
        overwrite: bool = False,
        processor: Any = None,
        license: str | None = None,
        card: CardInfo | Mapping[str, str] | None = None,
    ) -> Path:
        """Write config.json, safetensors shards (+ index) and a model card into ``directory``.

        Atomic: written into a temporary sibling and renamed into place, so a failure leaves no
        partial checkpoint. ``processor``: anything with ``save_pretrained(folder)`` (e.g.
        ``PaliProcessor``); its files land in the same folder. ``license`` overrides the one
        derived from the weight sources for the card; ``card`` ([`pali.hub.card.CardInfo`][] or a dict:
        ``title``, ``dataset``, ``notes``) says what the weights cannot, such as the data a
        fine-tuned model was trained on. An existing empty folder, or one holding
        only an earlier save of ours, is replaced the same way; a folder with anything else in it
        needs ``overwrite=True``.
        """
        from .hub.card import model_card
        from .io import atomic_directory, replaceable_save
        from .io.loading import CARD_NAME, write_model
        from .processing.processor import PROCESSOR_CONFIG_NAME
        from .processing.tokenizer import SPIECE_NAME

        if not overwrite:
            overwrite = replaceable_save(Path(directory), (CARD_NAME, PROCESSOR_CONFIG_NAME, SPIECE_NAME))
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            write_model(self, tmp, max_shard_size=max_shard_size, processor=processor,
                        card=model_card(self, license=license, info=card))
        return Path(directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "5GB",
        processor: Any = None,
        license: str | None = None,
        card: CardInfo | Mapping[str, str] | None = None,
    ):
        """Create ``repo_id`` if needed and upload what
        [`save_pretrained`][pali.PaliModel.save_pretrained] writes, as one commit."""
        from .hub.card import model_card
        from .hub.push import push_folder
        from .io.loading import write_model

        return push_folder(
            repo_id, lambda folder: write_model(
                self, folder, max_shard_size=max_shard_size, processor=processor,
                card=model_card(self, license=license, info=card)),
            token=token, create_options=dict(private=private),
            upload_options=dict(revision=revision, create_pr=create_pr,
                                commit_message=commit_message or f"Upload {self.config.preset or 'PaLI'} model with pali"),
        )


class PaliModel(PretrainedMixin, _Architecture):
    """A PaLI model (vision encoder -> connector -> text encoder-decoder) that loads and saves.

    The architecture is ``pali.models.pali.PaliModel``; this class adds
    the Hub and file entry points of ``PretrainedMixin``. Build one with ``from_preset``,
    ``PaliModel(config)``, ``from_pretrained`` or ``from_unimodal``.
    """
