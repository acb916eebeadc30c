"""The code a CLI card shows: how to load what the job saved, with the classes and inputs the job trained on, and run
one prediction. It runs as written once the Hub ids are real (tests/test_card_code.py runs it on local folders)."""

from __future__ import annotations

from typing import Optional

from ..hub import BASE_PLACEHOLDER, LOADING_HEADING, install_instructions

HERE = "<this repository id or local folder>"
AUTO_CLASSES = {"seq_cls": "AutoModelForSequenceClassification", "image_cls": "AutoModelForImageClassification",
                "causal_lm_mc": "AutoModelForCausalLM"}
PLUGIN_METHODS = ("gift", "lofit")
IMAGE_FILE = "image.jpg"
PROMPT = "Question: ...\nAnswer:"


def _labels(facts: dict) -> list[str]:
    """The ``id2label`` lines of a classification task: the data's class names, or transformers' ``LABEL_i`` for
    integer class ids."""
    if facts["labels"]:
        return [f"labels = {list(facts['labels'])!r}", "id2label = dict(enumerate(labels))"]
    return [f'id2label = {{i: f"LABEL_{{i}}" for i in range({facts["num_labels"]})}}  # class ids 0..'
            f'{facts["num_labels"] - 1}']


def _preprocessor(facts: dict, base: str) -> list[str]:
    """The tokenizer or image processor, set up as the job prepared its inputs."""
    inputs = facts.get("inputs") or {}
    if facts["task"] == "image_cls":
        size = inputs["image_size"]
        return ["# the job's preprocessing: RGB, resized to the training size (bicubic), scaled to [0, 1], normalised",
                f'processor = ViTImageProcessor(size={{"height": {size}, "width": {size}}}, resample=3,',
                f'                              image_mean={inputs["image_mean"]}, image_std={inputs["image_std"]})']
    lines = [f'tokenizer = AutoTokenizer.from_pretrained("{base}")']
    if inputs.get("pad_from"):
        lines.append(f"tokenizer.pad_token = tokenizer.{inputs['pad_from']}  # the job padded with it")
    return lines


def _model(facts: dict, base: str, adapter: bool, plugin: bool, loreft: bool) -> list[str]:
    """Lines that build ``model`` (in eval mode): the base with the job's classes and the adapter, or the saved model."""
    auto = AUTO_CLASSES[facts["task"]]
    if not adapter:
        lines = [f'model = {auto}.from_pretrained("{HERE}").eval()']
        if loreft:
            lines.append(f'model = load_loreft(model, "{HERE}")  # re-attaches the LoReFT interventions')
        return lines
    if facts["task"] == "causal_lm_mc":
        lines = [f'base = {auto}.from_pretrained("{base}")']
    else:
        pad = ", pad_token_id=tokenizer.pad_token_id" if facts["task"] == "seq_cls" else ""
        lines = [f"base = {auto}.from_pretrained(",
                 f'    "{base}", num_labels=len(id2label), id2label=id2label,',
                 f"    label2id={{name: i for i, name in id2label.items()}}{pad},",
                 "    ignore_mismatched_sizes=True,  # a new head for these classes; the adapter holds the trained one",
                 ")"]
    return lines + [f'model = PeftModel.from_pretrained(base, "{HERE}").eval()']


def _predict(facts: dict) -> list[str]:
    inputs = facts.get("inputs") or {}
    if facts["task"] == "causal_lm_mc":
        return ["# trained on prompt + \" \" + answer: write the prompt as the training data did",
                f"inputs = tokenizer({PROMPT!r}, return_tensors=\"pt\")",
                "output = model.generate(**inputs, max_new_tokens=16)",
                'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    if facts["task"] == "image_cls":
        first = f'inputs = processor(images=Image.open("{IMAGE_FILE}").convert("RGB"), return_tensors="pt")'
    else:
        texts = ['["a first text"]', '["a second text"]'] if inputs.get("texts") == 2 else ['["a text to classify"]']
        first = f'inputs = tokenizer({", ".join(texts)}, return_tensors="pt")'
    return [first, "predicted = model(**inputs).logits.argmax(-1).tolist()",
            "print([model.config.id2label[i] for i in predicted])"]


def _imports(facts: dict, adapter: bool, plugin: bool, loreft: bool) -> list[str]:
    task = facts["task"]
    extra = ["ViTImageProcessor"] if task == "image_cls" else ["AutoTokenizer"]
    lines = ["import peft_gift  # registers the GIFT and LoFiT adapter types with PEFT"] if plugin else []
    lines += ["from peft import PeftModel"] if adapter else []
    lines += ["from PIL import Image"] if task == "image_cls" else []
    lines += [f"from transformers import {', '.join(sorted([AUTO_CLASSES[task], *extra]))}"]
    lines += ["", "from peft_gift.recipes.loreft import load_loreft"] if loreft else []
    return lines


def usage_code(facts: dict, adapter: bool = True, plugin: Optional[bool] = None) -> list[str]:
    """The Python block (without fences) that loads what the job saved and predicts with it. ``adapter``: a PEFT
    adapter over the base model (else a whole saved model); ``plugin``: it needs ``import peft_gift`` (default: for
    GIFT / LoFiT)."""
    method = facts["method"]["name"]
    plugin = method in PLUGIN_METHODS if plugin is None else plugin
    loreft = method == "loreft" and not adapter
    base = facts["base_model"] or BASE_PLACEHOLDER
    lines = _imports(facts, adapter, plugin, loreft) + [""]
    if facts["task"] != "causal_lm_mc" and adapter:
        lines += _labels(facts)
    lines += _preprocessor(facts, base if adapter or facts["task"] == "image_cls" else HERE)
    return lines + _model(facts, base, adapter, plugin, loreft) + [""] + _predict(facts)


def usage_section(facts: dict, adapter: bool) -> list[str]:
    """The card's loading section: why and how to install the plugin (GIFT / LoFiT), then :func:`usage_code`."""
    method = facts["method"]["name"]
    what = "adapter" if adapter else "model"
    lines = [LOADING_HEADING if adapter else "## How to load this model", ""]
    if method in PLUGIN_METHODS and adapter:
        lines += [f"PEFT does not know the `{method.upper()}` adapter type by itself: install the peft-gift plugin and "
                  f"`import peft_gift` before loading, otherwise PEFT fails with `KeyError: '{method.upper()}'`.", "",
                  "```bash", *install_instructions(), "```", ""]
    elif method == "loreft":
        lines += ["The LoReFT interventions are peft-gift code: install it as below (Reproduce).", ""]
    lines += [f"Load the {what} and classify one input:" if facts["task"] != "causal_lm_mc" else
              f"Load the {what} and answer one prompt:", "", "```python", *usage_code(facts, adapter), "```", ""]
    return lines
