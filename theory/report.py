"""Run every claim and write the report: ``claims.md``, ``claims.json`` and PNG plots."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from theory.registry import all_claims
from theory.search import SearchConfig, run_claim

REPORT_DIR = Path(__file__).parent / "report"


def run_all(cfg: SearchConfig, ids=None, *, save=False, hypothesis=True, log=print) -> list[dict]:
    out = []
    for c in all_claims():
        if ids and c.id not in ids:
            continue
        t0 = time.time()
        r = run_claim(c, cfg, save=save, hypothesis=hypothesis)
        out.append(r)
        if log:
            log(f"  {c.id:5s} {r['verdict']:8s} tightness={_fmt(r['tightness'])} "
                f"({time.time() - t0:.1f}s)")
    return out


def _fmt(x, nd=3):
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if isinstance(x, float) and (abs(x) >= 1e4 or (abs(x) < 1e-3 and x != 0)):
        return f"{x:.2e}"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _budget_str(b: dict | None) -> str:
    if not b:
        return ""
    if "static_configs" in b:
        return (f"{b['static_configs']} configs x ({b['random']} random + {b['hypothesis']} "
                f"hypothesis + {b['adversarial_restarts']}x{b['adam_steps']} Adam)")
    return ", ".join(f"{k}={v}" for k, v in b.items())


def part_evidence(p: dict) -> str:
    bits = []
    o = p.get("original")
    if p.get("verdict") == "refuted":
        if o and math.isfinite(o.get("worst_ratio", math.inf)):
            meth = max((k for k, v in o["by_method"].items() if v is not None and v > 1),
                       key=lambda k: o["by_method"][k], default="?")
            rp = p.get("replay") or {}
            bits.append(f"**violated**: stored counterexample `{p.get('counterexample')}` replays "
                        f"(hypotheses {'hold' if rp.get('admissible') else 'FAIL'}): quantity "
                        f"{_fmt(rp.get('quantity'))} > bound {_fmt(rp.get('bound'))} "
                        f"(violation ratio {_fmt(rp.get('ratio'))}); this run's search: worst "
                        f"ratio {_fmt(o['worst_ratio'])} in {o['n_evals']} evaluations (best by "
                        f"{meth})")
        else:
            bits.append(f"**violated**: constructed counterexample `{p.get('counterexample')}`"
                        + (f": {o['evidence']}" if o and o.get("evidence") else ""))
    elif o:
        bits.append(f"no violation in {o['n_evals']} evaluations; worst ratio "
                    f"{_fmt(o['worst_ratio'])}")
    if p.get("hvp_check"):
        bits.append("HVP Lanczos at larger sizes: " + ", ".join(
            f"T={r['T']} frames {tuple(r['frame_shape'])}: {_fmt(r['lanczos'])} <= "
            f"{_fmt(r['bound'])}" for r in p["hvp_check"]))
    c = p.get("corrected")
    if c:
        bits.append(f"corrected: {'VIOLATED' if c['violated'] else 'unbroken'} in "
                    f"{c['n_evals']} evaluations, worst ratio {_fmt(c['worst_ratio'])}")
    w = p.get("witness")
    if w:
        bits.append(f"witness `{w['file']}` (hypotheses {'hold' if w['admissible'] else 'FAIL'}): "
                    f"ratio {_fmt(w['ratio'])}")
    return "; ".join(bits)


def tightness_cell(p: dict) -> str:
    """Tightness as what it is: lower bounds (search with its budget, closed-form witness) of the
    worst quantity/bound; the proof gives the upper end 1."""
    t = p.get("tightness")
    if t is None:
        return f"{p['part']}: n/a" + (f" ({p['tightness_note']})" if p.get("tightness_note") else "")
    of = p.get("tightness_of", "")
    out = f"{p['part']} ({of}): search >= {_fmt(t)}"
    if p.get("tightness_witness") is not None:
        out += f", witness {_fmt(p['tightness_witness'])}"
    if p.get("tightness_bracket"):
        lo, hi = p["tightness_bracket"]
        out += f", bracket [{_fmt(lo)}, {_fmt(hi, 0)}]"
    return out


def _cell(s: str) -> str:
    """Markdown table cell: escape pipes (norms are written ||x||)."""
    return str(s).replace("|", "\\|")


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def write_report(results: list[dict], cfg: SearchConfig, *, out_dir: Path = REPORT_DIR,
                 seconds: float | None = None, mode: str = "default", plots: bool = True) -> dict:
    from theory.tables import build_tables
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"mode": mode, "config": cfg.__dict__, "seconds": seconds,
            "grid": "every static configuration" if cfg.max_grid is None
            else f"the first {cfg.max_grid} static configuration(s) of each statement"}
    tables = build_tables(results)
    (out_dir / "claims.json").write_text(json.dumps(_clean({"meta": meta, "claims": results,
                                                            "tables": tables}), indent=1) + "\n")
    lines = ["# Appendix C of paper 004: executable claims", "",
             "Generated by `python -m theory` "
             f"(mode `{mode}`{f', {seconds:.0f} s' if seconds else ''}, {meta['grid']}); "
             "details, corrected statements and their proofs: "
             "[docs/theory.md](../../docs/theory.md).", "",
             "A refuted statement shows its **violation** ratio (quantity/bound > 1 at a stored, "
             "replayed counterexample whose hypotheses are re-checked). **Tightness** of a "
             "corrected statement (or of a paper's statement that holds) is given as what it "
             "is: lower bounds of sup quantity/bound -- the worst ratio the search found with "
             "the budget below, and the ratio at a closed-form witness "
             "(`theory/witnesses/`); the proof gives the upper end 1, so the true value lies in "
             "the bracket.", "",
             "| claim | statement (paper) | verdict | evidence | tightness (lower bounds) |",
             "|---|---|---|---|---|"]
    for r in results:
        ev = "<br>".join(f"**{p['part']}**: {part_evidence(p)}" for p in r["parts"])
        sym = [s for s in r["symbolic"]]
        if sym:
            ev += "<br>" + "<br>".join(f"sympy: {s['name']} -> {'pass' if s['passed'] else 'FAIL'}"
                                       for s in sym)
        tight = "<br>".join(tightness_cell(p) for p in r["parts"])
        lines.append(f"| {r['kind']} {r['id']} | {_cell(r['paper'])} | **{r['verdict']}** | "
                     f"{_cell(ev)} | {_cell(tight)} |")
    lines += ["", "## Certified constants: round one -> round two", "",
              "| bilateral filter (r, sigma_s) | W | Lambda round one | Lambda round two | "
              "diagonal bound | diagonal witness | M1 (displacement) | U (relative mode) |",
              "|---|---|---|---|---|---|---|---|"]
    for f in tables["constants"]["filter"]:
        lines.append(f"| ({f['radius']}, {f['sigma_spatial']:g}) | {f['W']:.3f} | "
                     f"{f['Lambda_v1']:.3f} | {f['Lambda_v2']:.3f} | {f['diag_bound']:.3f} | "
                     f"{f['diag_witness']:.3f} | {f['M1']:.3f} | {f['U']:.3f} |")
    lines += ["", "| temporal loss T | g_T round one | g_T round two | g_T attained | "
              "K_T round one | K_T round two | K_T witness (s = 0) |", "|---|---|---|---|---|---|---|"]
    for t in tables["constants"]["loss"]:
        lines.append(f"| {t['T']} | {t['g_v1']:.3f} | {t['g_v2']:.4f} | {t['g_lower']:.4f} | "
                     f"{t['K_v1']:.3f} | {t['K_v2']:.3f} | {t['K_witness']:.3f} |")
    lines += ["", "## Search budgets", "",
              "| claim | part | paper's statement searched with | corrected statement searched with |",
              "|---|---|---|---|"]
    for r in results:
        for p in r["parts"]:
            o, c = p.get("original"), p.get("corrected")
            lines.append(f"| {r['id']} | {p['part']} | {_budget_str(o and o.get('budget'))} | "
                         f"{_budget_str(c and c.get('budget'))} |")
    if plots:
        names = make_plots(results, out_dir)
        lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n in names]
    (out_dir / "claims.md").write_text("\n".join(lines) + "\n")
    return meta


def make_plots(results: list[dict], out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    # overview: tightness per claim part
    labels, vals, wits = [], [], []
    for r in results:
        for p in r["parts"]:
            t = p.get("tightness")
            if t is not None and math.isfinite(t):
                labels.append(f"{r['id']} {p['part']}")
                vals.append(t)
                wits.append(p.get("tightness_witness"))
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(labels) + 1))
    ax.barh(labels[::-1], vals[::-1], color="tab:blue", label="search (lower bound)")
    wy = [(i, w) for i, w in enumerate(wits[::-1]) if w is not None]
    ax.scatter([w for _, w in wy], [i for i, _ in wy], marker="D", color="tab:orange", s=14,
               zorder=3, label="witness (lower bound)")
    ax.axvline(0.1, color="tab:red", ls="--", lw=1, label="0.1 (too loose below)")
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xlabel("quantity / bound: lower bounds of the tightness (the proof gives 1)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "tightness_overview.png", dpi=90)
    plt.close(fig)
    names.append("tightness_overview.png")
    # per-parameter scatter: ratio against the parameters the statements report
    for r in results:
        series = []
        for p in r["parts"]:
            rec = p.get("_corr_rec") or (p.get("_orig_rec") if p.get("verdict") == "holds" else None)
            if rec is not None and rec.samples:
                series.append((p["part"] + (" (corrected)" if p.get("_corr_rec") else ""), rec.samples))
            orec = p.get("_orig_rec")
            if orec is not None and p.get("verdict") == "refuted" and orec.samples:
                series.append((p["part"] + " (paper)", orec.samples))
        if not series:
            continue
        keys = []
        for _, smp in series:
            for prm, _ in smp:
                for k, v in prm.items():
                    if isinstance(v, (int, float)) and k not in keys:
                        keys.append(k)
        keys = keys[:4]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
        for ax, k in zip(axes[0], keys):
            for lab, smp in series:
                xs = [prm[k] for prm, rr in smp if k in prm and rr is not None and math.isfinite(rr) and rr > 0]
                ys = [rr for prm, rr in smp if k in prm and rr is not None and math.isfinite(rr) and rr > 0]
                if xs:
                    ax.scatter(xs, ys, s=8, alpha=0.6, label=lab)
            ax.axhline(1.0, color="k", lw=1)
            ax.set_xlabel(k)
            ax.set_yscale("log")
            xs_all = [prm[k] for _, smp in series for prm, _ in smp if k in prm]
            if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 50:
                ax.set_xscale("log")
        axes[0][0].set_ylabel("quantity / bound")
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{r['kind']} {r['id']}: {r['title']}", fontsize=9)
        fig.tight_layout()
        n = f"tightness_{r['id'].replace('.', '_')}.png"
        fig.savefig(out_dir / n, dpi=80)
        plt.close(fig)
        names.append(n)
    return names


def print_table(results: list[dict]) -> str:
    rows = [("claim", "statement", "verdict", "tightness", "evidence")]
    for r in results:
        ev = " | ".join(f"{p['part']}: {part_evidence(p)}" for p in r["parts"])
        st = r["paper"]
        rows.append((f"{r['kind'][0]} {r['id']}", st[:58] + ("..." if len(st) > 58 else ""),
                     r["verdict"], _fmt(r["tightness"]),
                     ev[:120] + ("..." if len(ev) > 120 else "")))
    w = [max(len(x[i]) for x in rows) for i in range(4)]
    txt = "\n".join(f"{a:{w[0]}}  {b:{w[1]}}  {c:{w[2]}}  {t:{w[3]}}  {d}"
                    for a, b, c, t, d in rows)
    print(txt)
    return txt
