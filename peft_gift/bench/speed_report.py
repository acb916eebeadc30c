"""The speed benchmark's report: ratios of medians, the targets it checks, and the markdown table."""

from __future__ import annotations

from .speed_models import PEFT_METHODS


def _med(res, m, key):
    v = res["methods"].get(m, {}).get(key)
    return None if v is None else v["median_s"]


def add_ratios(res: dict) -> None:
    floor = _med(res, "floor", "step")
    lora = _med(res, "lora", "step")
    ib, ibm = res["inference_base"]["median_s"], res.get("inference_base_merged_round", {}).get("median_s")
    for r in res["methods"].values():
        s = r["step"]["median_s"]
        r["step_vs_floor"] = s / floor if floor else None
        r["step_vs_lora"] = s / lora if lora else None
        if "infer_unmerged" in r:
            r["infer_unmerged_vs_base"] = r["infer_unmerged"]["median_s"] / ib
        if "infer_merged" in r and ibm:
            r["infer_merged_vs_base"] = r["infer_merged"]["median_s"] / ibm


def targets(res: dict) -> list[dict]:
    """The issue's targets, evaluated on this run's medians."""
    M = res["methods"]
    out = []

    def add(name, value, limit, ok, unit="×"):
        out.append({"target": name, "measured": value, "limit": limit, "met": bool(ok) if value is not None else None,
                    "unit": unit})

    for g in ("gift_module", "gift_all"):
        if g in M:
            v = M[g].get("step_vs_lora")
            add(f"{g} step ≤ 1.10× LoRA", v, 1.10, v is not None and v <= 1.10)
            v = M[g].get("step_vs_floor")
            add(f"{g} step ≤ 1.15× floor", v, 1.15, v is not None and v <= 1.15)
            mg, ml = M[g].get("memory", {}).get("peak_delta_mib"), M.get("lora", {}).get("memory", {}).get("peak_delta_mib")
            if mg is not None and ml is not None:
                add(f"{g} peak memory ≤ LoRA's", mg / ml, 1.0, mg <= ml)
    if "lofit_bias" in M:
        v = M["lofit_bias"].get("step_vs_floor")
        add("lofit_bias step ≤ 1.03× floor", v, 1.03, v is not None and v <= 1.03)
    for m in PEFT_METHODS:
        if m in M and "infer_merged_vs_base" in M[m]:
            v = M[m]["infer_merged_vs_base"]
            add(f"{m} merged inference = base (within ±5%)", v, 1.05, abs(v - 1) <= 0.05)
        if m in M and "merge_s" in M[m]:
            v = M[m]["merge_s"]
            add(f"{m} merge < 2 s", v, 2.0, v < 2.0, unit="s")
    return out


def _ms(r, key):
    v = r.get(key)
    return "—" if v is None else f"{1e3 * v['median_s']:.0f} ({1e3 * v['min_s']:.0f}–{1e3 * v['max_s']:.0f})"


def _x(v, nd=3):
    return "—" if v is None else f"{v:.{nd}f}×"


def _size(b):
    if b is None:
        return "—"
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"


def markdown(report: dict) -> str:
    lines = [f"# Speed benchmark ({'quick' if report['quick'] else 'full'})", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch "
             f"{report['machine']['torch']}, peft {report['machine']['peft']}, {report['machine']['torch_threads']} torch "
             f"thread(s); interleaved rounds after 1 warm-up round (see each model); times are median (min–max) in ms. Command: `{report['command']}`", ""]
    for res in report["models"].values():
        lines += [f"## {res['model']}: batch {res['batch']}×{res['seq']}, {res['total_params']:,} parameters, "
                  f"{res['reps']} rounds", ""]
        if "lofit_heads" in res:
            lines += [f"LoFiT bias heads (K={len(res['lofit_heads'])}): {res['lofit_heads']}", ""]
        lines += ["| method | trainable | train step ms | ×floor | ×LoRA | peak mem Δ MiB | adapter file | merge s | "
                  "unmerged inf. ×base | merged inf. ×base | merge max abs diff |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in res["methods"].items():
            mem = r.get("memory", {})
            memv = "—" if "peak_delta_mib" not in mem else f"{mem['peak_delta_mib']:.0f}"
            if "error" in mem:
                memv = "error"
            lines.append(
                f"| {m} | {r['trainable_params']:,} | {_ms(r, 'step')} | {_x(r.get('step_vs_floor'))} | "
                f"{_x(r.get('step_vs_lora'))} | {memv} | {_size(r.get('file_bytes'))} | "
                f"{'—' if 'merge_s' not in r else format(r['merge_s'], '.3f')} | {_x(r.get('infer_unmerged_vs_base'))} | "
                f"{_x(r.get('infer_merged_vs_base'))} | "
                f"{'—' if 'merge_max_abs_diff' not in r else format(r['merge_max_abs_diff'], '.1e')} |")
        lines += ["", f"Base inference: {_ms(res, 'inference_base')} ms (unmerged round), "
                  f"{_ms(res, 'inference_base_merged_round')} ms (merged round).", "",
                  "| target | measured | met |", "|---|---|---|"]
        for t in res["targets"]:
            v = "—" if t["measured"] is None else (f"{t['measured']:.3f}{t['unit']}")
            lines.append(f"| {t['target']} | {v} | {'yes' if t['met'] else ('no' if t['met'] is False else '—')} |")
        lines.append("")
    return "\n".join(lines)
