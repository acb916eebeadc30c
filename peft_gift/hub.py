"""Model cards and Hub publishing for GIFT / LoFiT adapters.

Loading a GIFT or LoFiT adapter needs ``import peft_gift`` first (PEFT has no plugin discovery), so the card of such
an adapter should say how: install peft-gift (from its repository or a wheel: it is not on PyPI), ``import peft_gift``
and a ``PeftModel.from_pretrained`` snippet. A card never names a path of this machine: a base model loaded from a
local directory is shown as a placeholder (the training CLI names the Hub id it is a copy of instead). PEFT's ``save_pretrained`` card already carries ``library_name: peft`` and the ``gift`` / ``lofit`` tag (the
tuners add it to the base model's tags); two explicit functions add the rest (peft-gift patches no PEFT method):

* `write_model_card(model, folder)`: adds the tags ``peft`` and ``gift`` / ``lofit`` and a "How to load" section to
  ``folder/README.md`` (once; an edited card keeps its text).
* `push_to_hub(model, repo_id)`: use it instead of ``model.push_to_hub``. transformers 5's generic
  ``PushToHubMixin.push_to_hub`` (which ``PeftModel.push_to_hub`` is) replaces the README written by PEFT's
  ``save_pretrained`` with a plain transformers card (``library_name: transformers``, no adapter tags, for LoRA too).
  This one starts from the repository's existing card (if any), runs ``save_pretrained`` + `write_model_card`, and
  uploads the folder with one ``HfApi.upload_folder`` commit.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Optional

from ._registry import GIFT, LOFIT

LOADING_HEADING = "## How to load this adapter"
_TAGS = {GIFT: "gift", LOFIT: "lofit"}
METHOD_NAMES = {"gift": "GIFT (Generative Interpretable Fine-Tuning)", "lofit": "LoFiT (localized fine-tuning of attention heads)"}


BASE_PLACEHOLDER = "<base model Hub id>"


def is_local_path(name) -> bool:
    """Whether ``name`` names something on this machine (an existing path, or one that starts like a path) rather
    than a Hugging Face Hub id such as ``org/name``."""
    name = str(name)
    return name.startswith(("/", ".", "~", "\\")) or re.match(r"^[A-Za-z]:", name) is not None or os.path.exists(
        os.path.expanduser(name))


def published_base_model(model) -> Optional[str]:
    """The base model's Hub id as ``from_pretrained`` recorded it, or None when it was loaded from a local path."""
    name = getattr(getattr(model.get_base_model(), "config", None), "_name_or_path", "") or ""
    return name if name and not is_local_path(name) else None


def drop_local_base_model(data) -> None:
    """Remove the ``base_model`` entry and ``base_model:...`` tags of a card's metadata (``ModelCardData``) that name
    a local directory (PEFT writes them from the path the base model was loaded from)."""
    if data.tags:
        data.tags = [t for t in data.tags if not (t.startswith("base_model:") and is_local_path(t.split(":", 2)[-1]))]
    if isinstance(data.base_model, str) and is_local_path(data.base_model):
        data.base_model = None


def install_instructions() -> list[str]:
    """Shell lines that install peft-gift as the README says (it is not on PyPI): from the repository URL in the
    package metadata when it has one, else from a clone or a wheel."""
    from importlib import metadata

    try:
        urls = metadata.metadata("peft-gift").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    repo = next((u.split(",", 1)[1].strip() for u in urls if u.split(",", 1)[0].strip().lower() in
                 ("repository", "source", "homepage")), None)
    if repo:
        return [f'pip install "peft-gift @ git+{repo}"']
    return ["# peft-gift is not on PyPI: install it from a clone of its repository or from a wheel built from it",
            "pip install ./peft-gift             # a clone of the repository",
            "pip install peft_gift-*.whl         # or a wheel (python -m build)"]


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
    base_id = published_base_model(model) or BASE_PLACEHOLDER
    base_cls = type(base).__name__
    import transformers

    import_line = f"from transformers import {base_cls}" if hasattr(transformers, base_cls) else None
    if import_line is None:  # a custom model class: name the generic Auto class
        base_cls, import_line = "AutoModel", "from transformers import AutoModel"
    adapter = repo_id or "<this repository id or local folder>"
    method = " and ".join(METHOD_NAMES[_TAGS[t]] for t in types)
    labels = _label_arguments(base)
    return "\n".join([
        LOADING_HEADING,
        "",
        f"This is a {method} adapter for PEFT, provided by the `peft-gift` plugin. PEFT does not know the adapter "
        f"type {', '.join(repr(t.value) for t in types)} by itself: install the plugin and `import peft_gift` before "
        "loading, otherwise PEFT fails with `KeyError: "
        f"'{types[0].value}'`.",
        "",
        "```bash",
        *install_instructions(),
        "```",
        "",
        "```python",
        "import peft_gift  # registers the GIFT and LoFiT adapter types with PEFT",
        "from peft import PeftModel",
        import_line,
        "",
        f'base = {base_cls}.from_pretrained("{base_id}"{labels})',
        f'model = PeftModel.from_pretrained(base, "{adapter}")',
        "model = model.merge_and_unload()  # optional: fold the adapter into the base weights",
        "```",
        "",
    ])


def _label_arguments(base) -> str:
    """``from_pretrained`` arguments that give a classification head the adapter's classes (its saved head has one
    row per class, and the base checkpoint's own head may have another number); empty for other models."""
    id2label = getattr(getattr(base, "config", None), "id2label", None)
    if "Classification" not in type(base).__name__ or not id2label:
        return ""
    id2label = {int(k): v for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}
    label2id = {v: k for k, v in id2label.items()}
    return (f", num_labels={len(id2label)}, id2label={id2label!r}, label2id={label2id!r}, "
            "ignore_mismatched_sizes=True")


def write_model_card(model, output_dir: str, repo_id: Optional[str] = None) -> None:
    """Add the plugin tags and (if absent) the loading section to ``output_dir/README.md`` (the card PEFT's
    ``save_pretrained`` wrote, or a new one); drop the ``base_model`` entries PEFT wrote when they name a local
    directory. Does nothing for models without a GIFT / LoFiT adapter."""
    from huggingface_hub import ModelCard, ModelCardData

    types = plugin_peft_types(model)
    if not types:
        return
    path = os.path.join(output_dir, "README.md")
    card = ModelCard.load(path) if os.path.exists(path) else ModelCard.from_template(ModelCardData())
    drop_local_base_model(card.data)
    tags = list(card.data.tags or [])
    for tag in ["peft", *(_TAGS[t] for t in types)]:
        if tag not in tags:
            tags.append(tag)
    card.data.tags = tags
    card.data["library_name"] = "peft"
    text = card.text
    if LOADING_HEADING not in text:
        lines = text.splitlines()
        # after the title and its summary (before the first section) when there is a title, else at the top
        title = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
        at = next((i for i in range(title, len(lines)) if lines[i].startswith("## ")), title) if title else 0
        section = loading_instructions(model, repo_id)
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

    from ._version import __version__

    if not plugin_peft_types(model):
        raise ValueError("peft_gift.push_to_hub is for models with a GIFT or LoFiT adapter; use model.push_to_hub")
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
        model.save_pretrained(tmp, safe_serialization=True, **save_kwargs)
        write_model_card(model, tmp, repo_id)
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
