"""The report command: ``python -m theory`` writes the claims table as Markdown and JSON."""
import json
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
    data = json.loads((out / "claims.json").read_text())
    ids = {c["id"]: c for c in data["claims"]}
    assert ids["C.2"]["verdict"] == "refuted" and ids["C.11"]["verdict"] == "holds"
    assert ids["C.2"]["parts"][0]["replay"]["violated"]
    assert (out / "tightness_overview.png").exists()


def test_committed_report_covers_every_claim():
    data = json.loads((ROOT / "theory" / "report" / "claims.json").read_text())
    verdicts = {c["id"]: c["verdict"] for c in data["claims"]}
    assert len(verdicts) == 14
    assert {k for k, v in verdicts.items() if v == "holds"} == {"C.5", "C.11"}
    for c in data["claims"]:
        for p in c["parts"]:
            if p.get("corrected"):
                assert not p["corrected"]["violated"], (c["id"], p["part"])
