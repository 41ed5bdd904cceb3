"""bench/profile_step.py and bench/trace_kernels.py: kernel events picked from a perfetto trace
(device stream lines on a GPU, XLA host ops on CPU), classified by kind and summed per step; and
the --tiny path end to end on this CPU (a real jax.profiler trace)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tk = _load("trace_kernels")

# kernel names as they appear on an H100/H200 (cuDNN frontend SDPA, cuDNN convs, cuBLAS /
# nvjet GEMMs, XLA's renamed fusions <kind>_<heroes>_fusion_N, CUPTI memcpy names)
NAMES = {
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0": "attention",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_kernel0_0": "attention",
    "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
    "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x256x64": "convolution",
    "sm90_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x128x64": "convolution",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_cublas": "matmul",
    "nvjet_tst_128x256_64x4_1x2_h_bz_coopB_TNT": "matmul",
    "gemm_fusion_dot_17": "matmul",
    "loop_add_fusion_12": "elementwise",
    "loop_convert_fusion_3": "elementwise",   # 'convert' is not a convolution
    "wrapped_multiply": "elementwise",
    "input_reduce_fusion_4": "reduction",
    "loop_transpose_fusion_2": "copy/transpose",
    "input_transpose_fusion": "copy/transpose",
    "loop_dynamic_update_slice_fusion_1": "copy/transpose",
    "MemcpyD2D": "copy/transpose",
    "Memset": "copy/transpose",
    "some_library_kernel": "other",
}


@pytest.mark.parametrize("name,kind", sorted(NAMES.items()))
def test_classify_gpu_names(name, kind):
    assert tk.classify(name) == kind


def test_classify_uses_the_hlo_op_and_cpu_op_names():
    # an opaque library kernel is named by the HLO op XLA launched it for
    assert tk.classify("cudnn_generated_fort_native_kernel_1", "cudnn-conv-bw-filter.3") == "convolution"
    assert tk.classify("sm90_kernel", "cublas-gemm.2") == "matmul"
    for op, kind in {"convolution.4": "convolution", "conv_general_dilated.1": "convolution",
                     "dot.3": "matmul", "add_convert_fusion.2": "elementwise", "add.7": "elementwise",
                     "reduce.9": "reduction", "transpose_copy_fusion.1": "copy/transpose",
                     "copy.3448": "copy/transpose", "ynn_fusion.12": "other"}.items():
        assert tk.classify(op, op) == kind, op
    assert tk.family("loop_add_fusion_12") == "loop_add_fusion" == tk.family("loop_add_fusion")
    assert tk.family("add_convert_fusion.2") == "add_convert_fusion"


def _meta(pid, name, tid=None):
    e = {"ph": "M", "pid": pid, "name": "thread_name" if tid is not None else "process_name",
         "args": {"name": name}}
    if tid is not None:
        e["tid"] = tid
    return e


def _x(pid, tid, ts, dur, name, **args):
    e = {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}
    if args:
        e["args"] = args
    return e


ATTN = "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0"


def _gpu_trace():
    """Two steps on two streams; the device plane's derived lines repeat the time (never summed)."""
    ev = [_meta(1, "/device:GPU:0"), _meta(1, "Stream #7(Kernel,MemcpyD2D)", 7),
          _meta(1, "Stream #13(Kernel)", 13), _meta(1, "XLA Ops", 3735928563),
          _meta(1, "XLA Modules", 3735928562), _meta(1, "CUPTI overhead", 99),
          _meta(701, "/host:CPU"), _meta(701, "python", 5)]
    for s in range(2):
        t = 1000.0 * s
        ev += [_x(1, 7, t + 0, 300, ATTN, hlo_op="custom-call.1"),
               _x(1, 7, t + 300, 200, "sm90_xmma_fprop_implicit_gemm_bf16bf16", hlo_op="cudnn-conv.2"),
               _x(1, 7, t + 500, 100, "nvjet_tst_128x256", hlo_op="cublas-gemm.3"),
               _x(1, 7, t + 600, 50, "loop_add_fusion_1", hlo_op="loop_add_fusion.1"),
               _x(1, 7, t + 650, 50, "loop_add_fusion_2", hlo_op="loop_add_fusion.2"),
               _x(1, 13, t + 600, 40, "input_reduce_fusion", hlo_op="input_reduce_fusion"),  # overlaps
               _x(1, 7, t + 700, 10, "MemcpyD2D"),
               _x(1, 3735928563, t + 0, 710, "fusion.99"),       # XLA Ops line
               _x(1, 3735928562, t + 0, 710, "jit_step"),        # XLA Modules line
               _x(1, 99, t + 0, 5, "cuptiActivityFlush"),        # CUPTI overhead
               _x(701, 5, t + 0, 900, "PjitFunction(step)")]
    return {"displayTimeUnit": "ns", "traceEvents": ev}


def test_summarize_gpu_trace_sums_stream_events_per_step():
    s = tk.summarize(_gpu_trace(), steps=2, top=3)
    assert s["source"] == "device"
    assert s["lines"] == ["/device:GPU:0 / Stream #13(Kernel)", "/device:GPU:0 / Stream #7(Kernel,MemcpyD2D)"]
    assert s["kernels"] == 7 and s["distinct_kernels"] == 7
    assert s["kernel_ms"] == pytest.approx(0.750)   # 300+200+100+50+50+40+10 us per step
    assert s["busy_ms"] == pytest.approx(0.710)     # the reduce overlaps the add fusions
    kinds = {k["kind"]: k for k in s["kinds"]}
    assert list(kinds) == list(tk.KINDS)
    assert kinds["attention"]["ms"] == pytest.approx(0.300) and kinds["attention"]["share"] == pytest.approx(0.4)
    assert kinds["convolution"]["ms"] == pytest.approx(0.200)
    assert kinds["matmul"]["ms"] == pytest.approx(0.100)
    assert kinds["elementwise"]["ms"] == pytest.approx(0.100)
    assert kinds["reduction"]["ms"] == pytest.approx(0.040)
    assert kinds["copy/transpose"]["ms"] == pytest.approx(0.010)
    assert kinds["other"]["ms"] == 0.0
    assert sum(k["share"] for k in s["kinds"]) == pytest.approx(1.0)
    assert [r["kind"] for r in s["top"]] == ["attention", "convolution", "matmul"]
    top = s["top"][0]
    assert top["count"] == 1 and top["ms"] == pytest.approx(0.3) and top["full_name"] == ATTN
    assert len(top["kernel"]) == 70 and top["kernel"].endswith("...")
    fam = {r["kernel"]: r for r in tk.summarize(_gpu_trace(), steps=2)["families"]}
    assert fam["loop_add_fusion"]["count"] == 2 and fam["loop_add_fusion"]["ms"] == pytest.approx(0.1)


def test_device_plane_without_stream_names_skips_derived_lines():
    tr = _gpu_trace()
    for e in tr["traceEvents"]:
        if e.get("name") == "thread_name" and e["args"]["name"].startswith("Stream"):
            e["args"]["name"] = f"line {e['tid']}"
    s = tk.summarize(tr, steps=2)
    assert s["source"] == "device" and s["kernels"] == 7 and s["kernel_ms"] == pytest.approx(0.750)


def test_cpu_trace_falls_back_to_xla_host_ops():
    ev = [_meta(701, "/host:CPU"), _meta(701, "tf_XLAEigen/1", 11), _meta(701, "python", 5),
          _x(701, 5, 0, 500, "PjitFunction(step)"),
          _x(701, 11, 10, 100, "while.141", hlo_op="while.141", hlo_module="jit_step"),  # container
          _x(701, 11, 20, 30, "copy.3", hlo_op="copy.3", hlo_module="jit_step"),
          _x(701, 11, 50, 0.1, "end: copy.3"),
          _x(701, 11, 120, 60, "convolution.4", hlo_op="convolution.4", hlo_module="jit_step"),
          _x(701, 11, 200, 10, "ThreadpoolListener::Record")]
    s = tk.summarize({"traceEvents": ev}, steps=1)
    assert s["source"] == "host-xla-ops" and s["lines"] == ["/host:CPU / tf_XLAEigen/1"]
    assert s["kernels"] == 2 and s["kernel_ms"] == pytest.approx(0.090)
    kinds = {k["kind"]: k["ms"] for k in s["kinds"]}
    assert kinds["convolution"] == pytest.approx(0.060) and kinds["copy/transpose"] == pytest.approx(0.030)


def test_bad_traces_are_named():
    with pytest.raises(ValueError, match="no 'traceEvents'"):
        tk.summarize({"events": []}, steps=1)
    with pytest.raises(ValueError, match="no kernel events"):
        tk.summarize({"traceEvents": [_meta(701, "/host:CPU")]}, steps=1)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        tk.summarize(_gpu_trace(), steps=0)
    with pytest.raises(FileNotFoundError, match="no \\*.trace.json.gz"):
        tk.find_trace(REPO / "docs")


# a smaller UNet than TINY_UNET (two blocks, one with attention): the same code paths, compiled
# at optimisation level 0, so the end-to-end test stays well under a minute on 2 CPU cores
MICRO_UNET = {"act_fn": "silu", "attention_head_dim": 2, "block_out_channels": [16, 32],
              "center_input_sample": False, "cross_attention_dim": 32,
              "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "downsample_padding": 1,
              "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 1,
              "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 8, "out_channels": 4,
              "sample_size": 8, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}


def test_profile_step_tiny_end_to_end(tmp_path):
    """Real jax.profiler traces of the adapter step and of DDIM-inversion steps on CPU: host XLA
    ops, summed per step, inside the traced wall time; tables, JSON and the kept traces."""
    cfg = tmp_path / "unet.json"
    cfg.write_text(json.dumps(MICRO_UNET))
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    proc = subprocess.run(
        [sys.executable, "bench/profile_step.py", "--tiny", "--what", "train", "inversion",
         "--unet-config", str(cfg), "--taps", "up_blocks.1.attentions.*.transformer_blocks.0.attn1",
         "--clips", "1", "--frames", "4", "--inv-steps", "2", "--latent", "8", "--warmup", "1",
         "--steps", "2", "--keep-traces"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "profile_step_tiny.json").read_text())
    train, inv = saved["rows"]
    assert (train["what"], train["frames"], train["timed_steps"]) == ("train", 4, 2)
    assert (inv["what"], inv["frames"], inv["timed_steps"]) == ("inversion", 4, 2)  # one call of 2 steps
    for r in (train, inv):
        assert r["source"] == "host-xla-ops" and r["kernels"] > 50 and 0 < r["busy_ms"] <= r["kernel_ms"] + 1e-9
        # the ops of the traced steps lie inside the traced wall time (no host spans summed in)
        assert r["busy_ms"] <= 1.05 * r["wall_ms_traced"]
        assert sum(k["share"] for k in r["kinds"]) == pytest.approx(1.0)
        assert {k["kind"]: k["share"] for k in r["kinds"]}["convolution"] > 0
        assert r["top"] and all(a["ms"] >= b["ms"] for a, b in zip(r["top"], r["top"][1:]))
        assert Path(r["trace_file"]).is_file()
    assert train["kernels"] > inv["kernels"]  # forward + backward + update vs a forward
    assert sorted(p.name for p in (tmp_path / "out" / "profile_traces").iterdir()) == \
        ["inversion_4_tiny.trace.json.gz", "train_1_tiny.trace.json.gz"]
    assert "| train, 1 clip (4 frames) | host-xla-ops |" in proc.stdout
    assert "| inversion, 4 frames | host-xla-ops |" in proc.stdout and "top 15 kernels per step" in proc.stdout
