"""The report command: ``python -m theory`` writes the claims table as Markdown and JSON; the
committed report searched every static configuration of every statement."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_report_command_quick_subset(tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "theory", "--quick", "--claims", "C.2", "C.11",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "C.2" in r.stdout and "refuted" in r.stdout and "holds" in r.stdout
    md = (out / "claims.md").read_text()
    assert "| Lemma C.2 |" in md and "**refuted**" in md and "**holds**" in md
    assert "violation ratio" in md and "bracket [" in md and "search >=" in md
    data = json.loads((out / "claims.json").read_text())
    ids = {c["id"]: c for c in data["claims"]}
    assert ids["C.2"]["verdict"] == "refuted" and ids["C.11"]["verdict"] == "holds"
    p = ids["C.2"]["parts"][0]
    assert p["replay"]["violated"] and p["replay"]["admissible"]
    assert p["violation"] > 1 and p["tightness_witness"] > 0.999
    assert p["tightness_bracket"][1] == 1.0
    assert (out / "tightness_overview.png").exists()
    assert set(data["tables"]) == {"constants", "n_steps", "window", "relative",
                                   "symmetric_vs_paper"}


def test_committed_report_covers_every_claim_on_the_full_grid():
    data = json.loads((ROOT / "theory" / "report" / "claims.json").read_text())
    assert data["meta"]["config"]["max_grid"] is None          # every static configuration
    verdicts = {c["id"]: c["verdict"] for c in data["claims"]}
    assert len(verdicts) == 16
    assert {k for k, v in verdicts.items() if v == "holds"} == {"C.5", "C.11", "C.7-sym",
                                                                  "C.8-sym"}
    from theory.registry import all_claims
    grids = {(c.id, p.name): p for c in all_claims() for p in c.parts}
    for c in data["claims"]:
        for p in c["parts"]:
            part = grids[(c["id"], p["part"])]
            if p.get("corrected"):
                assert not p["corrected"]["violated"], (c["id"], p["part"])
                assert p["corrected"]["budget"]["static_configs"] == len(part.corrected.grid)
                lo, hi = p["tightness_bracket"]
                assert 0 < lo <= 1 + 1e-7 and hi == 1.0
            if p.get("verdict") == "refuted" and p.get("original", {}).get("budget", {}).get(
                    "static_configs"):
                v = p["violation"]
                assert (v == "inf" or v > 1) and p["replay"]["admissible"]
                assert p["original"]["budget"]["static_configs"] == len(part.original.grid)
    # the tables the notebook plots
    t = data["tables"]
    assert [r["N"] for r in t["n_steps"]] == [1, 2, 3, 4]
    assert all(r["search_lower"] <= r["certified_v2"] for r in t["n_steps"])
    assert all(r["symmetric_search_lower"] <= 1 + 1e-7 for r in t["symmetric_vs_paper"])
    assert all(r["paper_search_lower"] > 1 for r in t["symmetric_vs_paper"])
    assert all(math.isfinite(r["certified"]) for r in t["relative"])
