"""The shape of the library: imports form no cycle, the library never imports the recipes, modules and functions stay
small, and ``import peft_gift`` leaves PEFT's own adapter types behaving exactly as before (checked in fresh
processes)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "peft_gift"
RECIPES = "peft_gift.recipes"
# the application packages above the library (they may import it and each other; it never imports them)
APPLICATION = (RECIPES, "peft_gift.bench")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The peft_gift modules ``path`` imports anywhere in its code (also inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules}
    return found - {name}


def _import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(p, modules) for p in paths}


def _cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_library_has_no_import_cycle():
    graph = {m: deps for m, deps in _import_graph().items() if not m.startswith(APPLICATION)}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_recipes_and_benchmarks_have_no_import_cycle():
    """Above the library: checks <- tasks <- methods <- config <- pipeline <- cli, and the benchmarks on top (the
    config <-> methods <-> tasks cycle is gone)."""
    graph = {m: {d for d in deps if d.startswith(APPLICATION)} for m, deps in _import_graph().items()
             if m.startswith(APPLICATION)}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_registry_imports_nothing_of_ours_and_the_library_never_imports_the_recipes():
    graph = _import_graph()
    assert graph["peft_gift._registry"] == set()
    offenders = {m: sorted(d for d in deps if d.startswith(APPLICATION))
                 for m, deps in graph.items() if not m.startswith(APPLICATION)}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _sizes(path: Path):
    text = path.read_text()
    functions = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(text))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return len(text.splitlines()), functions


# modules being reworked elsewhere at the time of writing; shrink this set, never grow it
def test_modules_and_functions_stay_small():
    """No module of the package (library, recipes, benchmarks) over 400 lines, no function over 60."""
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        lines, functions = _sizes(path)
        too_big += [f"{relative}: {lines} lines"] if lines > 400 else []
        too_big += [f"{relative}: {name}() {n} lines" for name, n in functions if n > 60]
    assert too_big == []


_PEFT_MIXED = """
import json, sys
import torch
from peft import LoHaConfig, LoraConfig, PeftMixedModel, get_peft_model
import peft.tuners.mixed as mixed
from tiny_models import text_inputs, tiny_llama
if sys.argv[1] == "with":
    import peft_gift  # noqa: F401
torch.manual_seed(0)
model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                       adapter_name="lora", mixed=True)
model.add_adapter("loha", LoHaConfig(r=4, target_modules=["q_proj", "o_proj"], init_weights=False))
model.set_adapter(["lora", "loha"])
model.eval()
batch = text_inputs()
out = {"types": sorted(str(t) for t in mixed.COMPATIBLE_TUNER_TYPES)}
with torch.no_grad():
    out["both"] = model(**batch).logits.tolist()
    model.merge_adapter()
    out["merged"] = model(**batch).logits.tolist()
    model.unmerge_adapter()
    out["unmerged"] = model(**batch).logits.tolist()
    model.delete_adapter("loha")
    out["lora"] = model(**batch).logits.tolist()
    out["unloaded"] = model.merge_and_unload()(**batch).logits.tolist()
print(json.dumps(out))
"""


def test_import_peft_gift_leaves_peft_mixed_models_of_peft_types_unchanged(fresh_process):
    """``import peft_gift`` swaps the class `PeftMixedModel` builds and extends PEFT's lists: LoRA + LoHa mixed models
    give bit-identical outputs with and without it (forward, merge, unmerge, delete, merge_and_unload), and the
    accepted types only grow."""
    runs = {}
    for mode in ("with", "without"):
        code = f"import sys; sys.argv = ['x', {mode!r}]\n" + _PEFT_MIXED
        runs[mode] = json.loads(fresh_process(code).strip().splitlines()[-1])
    for key in ("both", "merged", "unmerged", "lora", "unloaded"):
        assert runs["with"][key] == runs["without"][key], key
    assert set(runs["without"]["types"]) < set(runs["with"]["types"])
    assert {"PeftType.GIFT", "PeftType.LOFIT"} == set(runs["with"]["types"]) - set(runs["without"]["types"])


def _private_peft_names(path: Path) -> set[str]:
    """``module.name`` of every private name ``path`` imports from PEFT (a ``_name`` or a name from a ``_module``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "peft":
            private_module = any(part.startswith("_") for part in node.module.split("."))
            found |= {f"{node.module}.{a.name}" for a in node.names if private_module or a.name.startswith("_")}
    return found


def test_private_peft_names_are_imported_in_one_place():
    """The library reaches PEFT's private helpers only through `peft_gift._peft_private`, which lists each one
    (`peft_gift.mixed` reads PEFT's mixed-model internals and switches itself off when they differ)."""
    from peft_gift import _peft_private

    library = [p for p in PACKAGE.rglob("*.py") if not _module_name(p).startswith(APPLICATION)]
    elsewhere = {_module_name(p): names for p in library
                 if (names := _private_peft_names(p)) and p.name != "_peft_private.py"}
    assert elsewhere == {}
    listed = _private_peft_names(PACKAGE / "_peft_private.py")
    assert {name.rpartition(".")[2] for name in listed} == set(_peft_private.__all__) - {"CHECKED_PEFT_VERSIONS"}
    assert all(name.rpartition(".")[2] in _peft_private.__doc__ for name in listed)
