"""Tasks of the training CLI: one class per task owns its columns, model head, encoding, collator and metrics.

Adding a task is one new :class:`~.task_base.Task` subclass registered in :data:`TASKS` (the classification tasks
live in :mod:`.task_classification`, multiple choice here); the config validation, data loading, methods and the run
code ask the task instead of testing its name.
"""

from __future__ import annotations

from .checks import ConfigError
from .task_base import HEAD_NAMES, Task, load_tokenizer
from .task_classification import ImageClassification, SequenceClassification


class MultipleChoice(Task):
    """``causal_lm_mc``: supervised fine-tuning on ``prompt + " " + right answer + eos`` (loss on the answer tokens
    only), evaluated by scoring every choice with :func:`~peft_gift.recipes.multiple_choice.score_choices`."""

    name = "causal_lm_mc"
    task_type = "CAUSAL_LM"
    has_head = False
    multi_dataset = True

    @classmethod
    def columns(cls, ds, data_cfg, name):
        out = super().columns(ds, data_cfg, name)
        cols = list(ds.column_names)
        prompt = "prompt" if "prompt" in cols else ("question" if "question" in cols else None)
        if prompt is None or "choices" not in cols:
            raise ConfigError(f"dataset {name!r} has columns {cols}; causal_lm_mc needs 'prompt' (or 'question'), "
                              f"'choices' (list of strings) and {out['label']!r} (index of the right choice), as in "
                              f"the commonsense assets (arc_easy, boolq, ...)")
        out["prompt"] = prompt
        return out

    @classmethod
    def kept_columns(cls, columns):
        return [columns["prompt"], "choices", columns["label"]]

    def __init__(self, model_path, data_cfg, columns, train, evl):
        super().__init__(model_path, data_cfg, columns, train, evl)
        self.max_length = int(data_cfg.get("max_length", 256))
        self.tokenizer = load_tokenizer(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"  # prompt positions must not depend on the batch

    def load_model(self):
        from transformers import AutoModelForCausalLM

        if not self.quantization:
            return AutoModelForCausalLM.from_pretrained(self.model_path)
        import os

        import torch
        from transformers import BitsAndBytesConfig

        from .._bnb_cpu import keep_standard_4bit_layout

        # a quantized base (QGIFT): bitsandbytes quantizes while loading, on this process's device
        device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, quantization_config=BitsAndBytesConfig(**self.quantization), device_map=device_map)
        keep_standard_4bit_layout(model)  # the "before" evaluation must not repack it (peft_gift._bnb_cpu)
        return model

    def encode(self, ds):
        from .multiple_choice import encode_pair

        cols = self.columns

        def fn(batch):
            ids, labels = [], []
            for prompt, choices, lab in zip(batch[cols["prompt"]], batch["choices"], batch[cols["label"]]):
                seq, n_prompt = encode_pair(self.tokenizer, prompt, " " + str(choices[int(lab)]), self.max_length,
                                            add_eos=True)
                ids.append(seq)
                labels.append([-100] * n_prompt + seq[n_prompt:])
            return {"input_ids": ids, "labels": labels}

        return ds.map(fn, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    def collator(self):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100)

    def evaluate(self, model, eval_raw, eval_encoded, batch_size, progress=False) -> dict:
        from .loreft import LoReft
        from .multiple_choice import evaluate_multiple_choice

        # LoReFT edits the last positions of a sequence, so a prompt's states depend on the choice after it
        shared_prompt = not isinstance(getattr(model, "loreft", None), LoReft)
        return evaluate_multiple_choice(model, self.tokenizer, eval_raw, self.columns, self.max_length,
                                        batch_size=batch_size, shared_prompt=shared_prompt, progress=progress)


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (SequenceClassification, MultipleChoice, ImageClassification)}
__all__ = ["HEAD_NAMES", "TASKS", "ImageClassification", "MultipleChoice", "SequenceClassification", "Task",
           "load_tokenizer"]
