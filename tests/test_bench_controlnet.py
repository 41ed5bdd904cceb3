"""``bench/controlnet_step.py --tiny``: the GPU benchmark's code (adapter step with a frozen
ControlNet: ours, and diffusers UNet + ControlNetModel + peft LoRA eager) runs on CPU and writes
its table and JSON (in this process; on the GPU each implementation gets its own)."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


def test_controlnet_step_bench_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("controlnet_step", REPO / "bench" / "controlnet_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = SimpleNamespace(tiny=True, latent=8, clips=1, warmup=1, repeats=1, inner=1)
    rows = [bench.run_jax(args), bench.run_torch(args, compile_mode=False)]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["loss"] == r["loss"] and r["trainable_params"] > 0
    # same adapter: the same trainable parameter count (LoRA on every projection + tokens)
    assert rows[0]["trainable_params"] > 0 and rows[1]["trainable_params"] > 0
    path = bench.report(rows, args)
    saved = json.loads(Path(path).read_text())["rows"]
    assert [r["impl"] for r in saved] == ["jax", "torch-eager"] and "speedup_vs_torch-eager" in saved[0]
    assert "| jax |" in capsys.readouterr().out
    sys.modules.pop("controlnet_step", None)
