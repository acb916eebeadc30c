"""Model cards and Hub publishing for GIFT / LoFiT adapters.

Loading a GIFT or LoFiT adapter needs ``import peft_gift`` first (PEFT has no plugin discovery), so every card written
for such an adapter says how: ``pip install peft-gift``, ``import peft_gift`` and a ``PeftModel.from_pretrained``
snippet. ``install()`` (called by ``import peft_gift``) hooks two PeftModel methods, acting only when an adapter of
the model is GIFT or LoFiT:

* ``create_or_update_model_card`` (run by ``save_pretrained``): adds the tags ``peft`` and ``gift`` / ``lofit`` and a
  "How to load" section (once; an edited card keeps its text).
* ``push_to_hub``: transformers 5's generic ``PushToHubMixin.push_to_hub`` replaces the README written by PEFT's
  ``save_pretrained`` with a plain transformers card (``library_name: transformers``, no adapter tags). For our
  adapters it instead starts from the repository's existing card (if any), lets ``save_pretrained`` update it, and
  uploads the folder with one ``HfApi.upload_folder`` commit.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

from ._registry import GIFT, LOFIT

LOADING_HEADING = "## How to load this adapter"
_TAGS = {GIFT: "gift", LOFIT: "lofit"}
_NAMES = {GIFT: "GIFT (Generative Interpretable Fine-Tuning)", LOFIT: "LoFiT (localized fine-tuning of attention heads)"}


def plugin_peft_types(model) -> list:
    """The GIFT / LOFIT peft types among ``model.peft_config`` (empty for other PEFT methods)."""
    configs = getattr(model, "peft_config", None) or {}
    found = []
    for config in configs.values():
        peft_type = getattr(config, "peft_type", None)
        if peft_type in _TAGS and peft_type not in found:
            found.append(peft_type)
    return found


def loading_instructions(model, repo_id: Optional[str] = None) -> str:
    """Markdown section telling a reader how to install the plugin and load this adapter."""
    types = plugin_peft_types(model)
    base = model.get_base_model()
    base_id = getattr(getattr(base, "config", None), "_name_or_path", "") or "<base model id or path>"
    base_cls = type(base).__name__
    import transformers

    import_line = f"from transformers import {base_cls}" if hasattr(transformers, base_cls) else None
    if import_line is None:  # a custom model class: name the generic Auto class
        base_cls, import_line = "AutoModel", "from transformers import AutoModel"
    adapter = repo_id or "<this repository id or local folder>"
    method = " and ".join(_NAMES[t] for t in types)
    return "\n".join([
        LOADING_HEADING,
        "",
        f"This is a {method} adapter for PEFT, provided by the `peft-gift` plugin. PEFT does not know the adapter "
        f"type {', '.join(repr(t.value) for t in types)} by itself: install the plugin and `import peft_gift` before "
        "loading, otherwise PEFT fails with `KeyError: "
        f"'{types[0].value}'`.",
        "",
        "```bash",
        "pip install peft-gift",
        "```",
        "",
        "```python",
        "import peft_gift  # registers the GIFT and LoFiT adapter types with PEFT",
        "from peft import PeftModel",
        import_line,
        "",
        f'base = {base_cls}.from_pretrained("{base_id}")',
        f'model = PeftModel.from_pretrained(base, "{adapter}")',
        "model = model.merge_and_unload()  # optional: fold the adapter into the base weights",
        "```",
        "",
    ])


def add_loading_section(model, output_dir: str, repo_id: Optional[str] = None) -> None:
    """Add the plugin tags and (if absent) the loading section to ``output_dir/README.md``."""
    from huggingface_hub import ModelCard, ModelCardData

    types = plugin_peft_types(model)
    if not types:
        return
    path = os.path.join(output_dir, "README.md")
    card = ModelCard.load(path) if os.path.exists(path) else ModelCard.from_template(ModelCardData())
    tags = list(card.data.tags or [])
    for tag in ["peft", *(_TAGS[t] for t in types)]:
        if tag not in tags:
            tags.append(tag)
    card.data.tags = tags
    card.data["library_name"] = "peft"
    text = card.text
    if LOADING_HEADING not in text:
        lines = text.splitlines()
        # after the title line when there is one, else at the top
        at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
        section = loading_instructions(model, repo_id or getattr(model, "_peft_gift_repo_id", None))
        text = "\n".join(lines[:at] + ["", section] + lines[at:])
    card.text = text
    card.save(path)


def push_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    token=None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    tags: Optional[list[str]] = None,
    **save_kwargs,
):
    """Save ``model`` (a PeftModel with GIFT / LoFiT adapters) with PEFT's ``save_pretrained`` and upload the folder:
    adapter_config.json, adapter_model.safetensors (never a pickle) and a README with the loading section."""
    from huggingface_hub import HfApi, ModelCard
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    from . import __version__

    if save_kwargs.get("safe_serialization") is False:
        raise ValueError("peft-gift publishes adapters as safetensors only; drop safe_serialization=False")
    save_kwargs.pop("max_shard_size", None)  # adapters are small: never sharded
    api = HfApi(library_name="peft-gift", library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        try:  # keep an existing card's text; save_pretrained updates it
            ModelCard.load(repo_id, token=token).save(os.path.join(tmp, "README.md"))
        except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError):
            pass
        model.__dict__["_peft_gift_repo_id"] = repo_id
        try:
            model.save_pretrained(tmp, safe_serialization=True, **save_kwargs)
        finally:
            model.__dict__.pop("_peft_gift_repo_id", None)
        if tags:
            card = ModelCard.load(os.path.join(tmp, "README.md"))
            card.data.tags = list(card.data.tags or []) + [t for t in tags if t not in (card.data.tags or [])]
            card.save(os.path.join(tmp, "README.md"))
        if revision is not None and not revision.startswith("refs/pr"):
            api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=tmp, commit_message=commit_message or "Upload GIFT/LoFiT adapter",
            commit_description=commit_description, token=token, revision=revision, create_pr=create_pr,
        )


def install() -> None:
    """Hook PeftModel's card writer and push_to_hub (idempotent; other PEFT methods are left as they were)."""
    from peft import PeftModel

    if getattr(PeftModel, "_peft_gift_hub_installed", False):
        return
    original_card = PeftModel.create_or_update_model_card
    original_push = PeftModel.push_to_hub

    def create_or_update_model_card(self, output_dir: str):
        original_card(self, output_dir)
        add_loading_section(self, output_dir)

    def peft_push_to_hub(self, repo_id: str, *args, **kwargs):
        if plugin_peft_types(self):
            return push_to_hub(self, repo_id, *args, **kwargs)
        return original_push(self, repo_id, *args, **kwargs)

    create_or_update_model_card.__doc__ = original_card.__doc__
    peft_push_to_hub.__doc__ = original_push.__doc__
    PeftModel.create_or_update_model_card = create_or_update_model_card
    PeftModel.push_to_hub = peft_push_to_hub
    PeftModel._peft_gift_hub_installed = True
