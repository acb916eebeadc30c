"""push_to_hub of GIFT / LoFiT adapters against a local stand-in for the Hub API (no network).

The stand-in replaces the HfApi methods a push calls (create_repo, create_branch, upload_folder, create_commit) and
ModelCard.load / hf_hub_download for remote reads: repositories are folders under a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import model_output, random_gift_model, text_inputs, tiny_llama

import peft_gift
from peft_gift import LofitConfig

BASE_ID = "tiny-org/tiny-llama"


class FakeHub:
    """Repositories as folders; records every call."""

    def __init__(self, root):
        self.root = str(root)
        self.calls = []

    def repo_dir(self, repo_id):
        return os.path.join(self.root, repo_id.replace("/", "__"))

    def install(self, monkeypatch):
        hub = self

        def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kw):
            hub.calls.append(("create_repo", repo_id))
            repo_id = repo_id if "/" in repo_id else f"me/{repo_id}"
            os.makedirs(hub.repo_dir(repo_id), exist_ok=exist_ok)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(self, repo_id, *, branch, **kw):
            hub.calls.append(("create_branch", repo_id, branch))

        def upload_folder(self, *, repo_id, folder_path, commit_message=None, revision=None, **kw):
            hub.calls.append(("upload_folder", repo_id, commit_message, revision))
            dest = hub.repo_dir(repo_id)
            for name in os.listdir(folder_path):
                shutil.copy(os.path.join(folder_path, name), os.path.join(dest, name))
            return f"https://huggingface.co/{repo_id}/commit/0"

        def create_commit(self, repo_id, operations, **kw):
            hub.calls.append(("create_commit", repo_id))
            for op in operations:
                shutil.copy(op.path_or_fileobj, os.path.join(hub.repo_dir(repo_id), op.path_in_repo))
            return f"https://huggingface.co/{repo_id}/commit/0"

        def card_load(cls, repo_id_or_path, repo_type=None, token=None, ignore_metadata_errors=False):
            if os.path.isfile(repo_id_or_path):
                return original_load.__func__(cls, repo_id_or_path)
            hub.calls.append(("card_load", repo_id_or_path))
            path = os.path.join(hub.repo_dir(repo_id_or_path), "README.md")
            if not os.path.exists(path):
                raise EntryNotFoundError(f"README.md not found in {repo_id_or_path}")
            return original_load.__func__(cls, path)

        original_load = ModelCard.load
        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(ModelCard, "load", classmethod(card_load))
        return self


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return FakeHub(tmp_path / "hub").install(monkeypatch)


def base():
    model = tiny_llama()
    model.config._name_or_path = BASE_ID  # what from_pretrained(BASE_ID) sets
    model.name_or_path = BASE_ID
    return model


def gift_model():
    return random_gift_model(base())


def lofit_model():
    model = get_peft_model(base(), LofitConfig(mode="bias", heads=[(0, 1), (1, 2)], init_std=0.1))
    return model


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


@pytest.mark.parametrize("make,peft_type,tag", [(gift_model, "GIFT", "gift"), (lofit_model, "LOFIT", "lofit")])
def test_push_uploads_config_safetensors_and_card(hub, make, peft_type, tag):
    model = make()
    peft_gift.push_to_hub(model, "me/adapter")
    files = sorted(os.listdir(hub.repo_dir("me/adapter")))
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert [c[0] for c in hub.calls] == ["create_repo", "card_load", "upload_folder"]

    repo = hub.repo_dir("me/adapter")
    config = json.load(open(os.path.join(repo, "adapter_config.json")))
    assert config["peft_type"] == peft_type
    assert config["base_model_name_or_path"] == BASE_ID
    with open(os.path.join(repo, "adapter_model.safetensors"), "rb") as f:  # a safetensors header, not a pickle
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    assert all(k.startswith("base_model.") for k in header if k != "__metadata__")

    readme = open(os.path.join(repo, "README.md")).read()
    meta = front_matter(readme)
    assert meta["library_name"] == "peft" and meta["base_model"] == BASE_ID
    assert "peft" in meta["tags"] and tag in meta["tags"]
    assert all(line in readme for line in peft_gift.hub.install_instructions()) and "import peft_gift" in readme
    assert "pip install peft-gift\n" not in readme  # not on PyPI: the card says what the README says
    assert 'PeftModel.from_pretrained(base, "me/adapter")' in readme
    assert f'LlamaForCausalLM.from_pretrained("{BASE_ID}")' in readme


def test_card_snippet_loads_the_pushed_adapter(hub):
    """Execute the card's code block against the stand-in repository: it must rebuild the same model."""
    model = gift_model()
    peft_gift.push_to_hub(model, "me/adapter")
    repo = hub.repo_dir("me/adapter")
    readme = open(os.path.join(repo, "README.md")).read()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    snippet = snippet.replace(f'.from_pretrained("{BASE_ID}")', "(base_config)")  # the base id is not on disk
    snippet = snippet.replace('"me/adapter"', repr(repo))
    namespace = {"base_config": model.get_base_model().config}
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(snippet, namespace)
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    # the snippet built a fresh random base; load the pushed adapter onto our base to compare outputs exactly
    reloaded = PeftModel.from_pretrained(base(), repo)
    inputs = text_inputs()
    torch.testing.assert_close(model_output(reloaded, inputs), model_output(model, inputs), rtol=0, atol=0)
    assert "model" in namespace and not isinstance(namespace["model"], PeftModel)  # merged by the snippet


def test_repush_keeps_existing_card_text_and_extra_tags(hub):
    model = gift_model()
    peft_gift.push_to_hub(model, "me/adapter")
    path = os.path.join(hub.repo_dir("me/adapter"), "README.md")
    card = ModelCard.load(path)
    card.text = card.text + "\n## My results\n\nAccuracy 0.93 on my data.\n"
    card.save(path)
    peft_gift.push_to_hub(model, "me/adapter", tags=["my-tag"], commit_message="second")
    readme = open(path).read()
    assert "Accuracy 0.93 on my data." in readme
    assert readme.count("## How to load this adapter") == 1
    assert {"peft", "gift", "my-tag"} <= set(front_matter(readme)["tags"])
    assert hub.calls[-1] == ("upload_folder", "me/adapter", "second", None)


def test_save_pretrained_card_is_tagged_and_write_model_card_adds_instructions(tmp_path):
    model = gift_model()
    model.save_pretrained(tmp_path)
    readme = open(tmp_path / "README.md").read()
    meta = front_matter(readme)
    assert meta["library_name"] == "peft" and "gift" in meta["tags"]  # PEFT's own card carries our tag
    peft_gift.write_model_card(model, str(tmp_path))
    peft_gift.write_model_card(model, str(tmp_path))  # idempotent
    readme = open(tmp_path / "README.md").read()
    assert "import peft_gift" in readme and all(line in readme for line in peft_gift.hub.install_instructions())
    assert readme.count("## How to load this adapter") == 1
    assert {"peft", "gift"} <= set(front_matter(readme)["tags"])


def test_push_refuses_pickle(hub):
    with pytest.raises(ValueError, match="safetensors only"):
        peft_gift.push_to_hub(gift_model(), "me/adapter", safe_serialization=False)
    assert hub.calls == []  # refused before any Hub call


def test_other_peft_methods_untouched(tmp_path):
    """LoRA keeps PEFT's own card and push path: peft-gift patches nothing and refuses non-plugin models."""
    model = get_peft_model(base(), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    readme = open(tmp_path / "README.md").read()
    assert "peft_gift" not in readme and "gift" not in front_matter(readme).get("tags", [])
    assert peft_gift.hub.plugin_peft_types(model) == []
    peft_gift.write_model_card(model, str(tmp_path))
    assert open(tmp_path / "README.md").read() == readme
    with pytest.raises(ValueError, match="GIFT or LoFiT"):
        peft_gift.push_to_hub(model, "me/lora")


def test_card_snippet_of_a_classifier_gives_the_head_its_classes(tmp_path):
    """A classification adapter saves its head (one row per class): the card's code passes the classes, so it loads
    onto the base checkpoint even when that checkpoint's head has another number of classes, with the label names."""
    from tiny_models import tiny_bert
    from transformers import AutoModelForSequenceClassification

    labels = {0: "neg", 1: "neutral", 2: "pos"}
    tiny_bert().save_pretrained(tmp_path / "base")  # a 2-class head
    base = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
        ignore_mismatched_sizes=True)
    model = get_peft_model(base, peft_gift.GiftConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    model.save_pretrained(tmp_path / "adapter")
    peft_gift.write_model_card(model, str(tmp_path / "adapter"))
    readme = (tmp_path / "adapter" / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    snippet = snippet.replace(peft_gift.hub.BASE_PLACEHOLDER, str(tmp_path / "base"))
    snippet = snippet.replace("<this repository id or local folder>", str(tmp_path / "adapter"))
    namespace = {}
    exec(snippet, namespace)
    loaded = namespace["model"]
    assert loaded.config.id2label == labels
    inputs = text_inputs()
    torch.testing.assert_close(model_output(loaded, inputs), model_output(model.merge_and_unload(), inputs),
                               atol=1e-5, rtol=1e-5)
