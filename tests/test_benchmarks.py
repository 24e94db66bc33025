"""The benchmark scripts that issue #13 added run as a user runs them: ``benchmarks/gpu.py`` (``make
gpu-check``) says so and exits 0 without CUDA, and its CUDA code runs on the CPU with the tiny recipe
standing in for the paper one, so a first GPU run does not fail on a typo; the input-pipeline
benchmark's "before" path (the synchronous code of de076d9) gives the same batches as the new one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from pfanet_cli.engine.runtime import cpu_has_native_bf16
from tests.helpers import REPO

BENCHMARKS = REPO / "benchmarks"


def run_script(name: str, *args: str, timeout: int = 1200) -> tuple[dict, subprocess.CompletedProcess]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1]), done


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    result, done = run_script("gpu.py")
    assert done.returncode == 0 and done.stdout.count("\n") == 1
    assert result["cuda"] is False and "no CUDA device" in result["note"]


@pytest.mark.slow
def test_gpu_check_runs_its_cuda_code_on_the_cpu():
    result, done = run_script("gpu.py", "--device", "cpu", "--paper-recipe", "tiny_cpu.yaml", "--iterations", "1",
                              "--warmup", "1", "--precisions", "auto", "bf16", "--tiny-overrides",
                              "gan.iterations=2", "joint.warmup_iterations=1", "joint.iterations=1")
    assert done.returncode == 0, (result, done.stderr[-3000:])
    assert done.stdout.count("\n") == 1  # the commands' own output went to stderr
    assert result["failed"] == [] and result["cuda"] is False
    tiny = result["tiny_end_to_end"]
    for precision in ("bf16", "tf32"):
        assert 0 <= tiny[precision]["r1"] <= 100 and 0 <= tiny[precision]["mAP"] <= 100
    assert result["torchrun"] == {"ok": True, "backend": "gloo", "world_size": 1,
                                  "seconds": result["torchrun"]["seconds"]}
    paper = result["paper"]
    auto = "bf16 autocast" if cpu_has_native_bf16() else "fp32"  # what train.amp=auto picks on this CPU
    assert paper["auto"]["precision"] == auto and paper["bf16"]["precision"] == "bf16 autocast"
    for phase in ("gan", "warmup", "joint"):
        row = paper["bf16"][phase]
        assert row["images_per_s"] > 0 and row["sustained_tflops"] >= 0 and 0 <= row["data_wait_fraction"] <= 1
    assert set(result["projected_schedule_minutes"]) == {"auto", "bf16"}


@pytest.mark.slow
def test_input_pipeline_benchmark_before_and_after_give_the_same_batches():
    result, done = run_script("input_pipeline.py", "--height", "64", "--width", "32", "--batches", "2",
                              "--loop-steps", "2", "--steps-ms", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert result["same_batches"] is True and result["images_per_batch"] == 72
    assert set(result["before"]) == {"channels_last_off", "channels_last_on"}
    assert set(result["after"]) == {"prefetch_0", "prefetch_2"}
    assert set(result["wait_fraction"]["step_1ms"]) == {"before", "after"}


def test_search_benchmark_times_exact_and_faiss_search_and_skips_what_does_not_fit():
    result, done = run_script("search.py", "--sizes", "3000", "70000000", "--dims", "16", "--queries", "20",
                              "--repeats", "1", "--skip-embedding", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = result["topk"]
    assert (row["gallery"], row["dim"], row["queries"]) == (3000, 16, 20) and row["exact_batch_s"] > 0
    assert result["skipped"] == ["70000000 x 16: 4 GiB of float32"]    # 4.5 GB: over the 4 GiB limit
    if result["faiss"]:
        assert 0 < row["faiss_recall_at_10"] <= 1 and row["faiss_index"].startswith("faiss IVF-Flat")
        assert row["faiss_build_s"] > 0


@pytest.mark.slow
def test_ablation_trains_each_variant_per_seed_chooses_on_val_and_resumes(tmp_path):
    out = tmp_path / "ablation"
    args = ("--out", str(out), "--recipe", "tiny_cpu.yaml", "--ids", "20", "--seeds", "0,1", "--jobs", "2",
            "--validate-every", "2", "--only", "B (plain);B + BNG + MMM (no GAN);PFANet (B + BNG + MMM + GAN)",
            "--fidelity")
    result, done = run_script("ablation.py", *args, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(result["variants"]) == ["B (plain)", "B + BNG + MMM (no GAN)", "PFANet (B + BNG + MMM + GAN)"]
    for name, row in result["variants"].items():
        assert row["seeds"] == [0, 1]
        for key in ("r1", "mAP", "ir_ir_r1", "rgb_rgb_r1"):
            mean, std = row[key]
            assert 0 <= mean <= 100 and std >= 0
    runs = {path.parent.name: json.loads(path.read_text()) for path in out.glob("*/result.json")}
    assert len(runs) == 6 and (out / "gan-seed0").is_dir() and (out / "gan-seed1").is_dir()
    for name, run in runs.items():
        best = run["val_best"]
        assert best["mAP"] == max(v[2] for v in run["val_curve"])  # the scored model is the best on val
        test = json.loads((out / name / "test.json").read_text())
        assert test["card"]["checkpoint"]["path"].endswith("joint/checkpoints/best.pt")
        assert "val mAP" in test["card"]["checkpoint"]["chosen"]
        assert ("fidelity" in run) == (not name.startswith("b-bng-mmm-no-gan"))
    grey = yaml.safe_load((out / "b-bng-mmm-no-gan-seed0" / "joint" / "run.yaml").read_text())
    assert grey["init_gan"].startswith("none: model.pixel_alignment is grey")
    table = (out / "table.md").read_text()
    assert "| B + BNG + MMM (no GAN) |" in table and "mean ± std over seeds" in table
    stamp = (out / "table.md").stat().st_mtime_ns
    again, done = run_script("ablation.py", *args, timeout=600)  # resumes: every run is kept
    assert done.returncode == 0 and again["variants"] == result["variants"]
    assert (out / "table.md").stat().st_mtime_ns >= stamp


def test_ablation_trains_agw_recipes_with_train_agw_and_pfanet_ones_with_train_joint(tmp_path):
    """The `baselines` set: AGW and CAJ (model.method=agw) run train-agw with agw.validate_every into <run>/agw,
    PFANet's train-joint with joint.validate_every, from the seed's train-gan run when the variant has one."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import ablation  # the benchmark script, imported to check the commands it would run
    finally:
        sys.path.remove(str(BENCHMARKS))
    plan = ablation.Plan(tmp_path, "demo_cpu.yaml", 20, [0], list(ablation.VARIANT_SETS["baselines"]), ["train.log_every=5"], 1,
                         25, False)
    agw, caj, pfanet, pfanet_caj = plan.variants
    stage, folder, args = ablation.training_command(plan, agw, 3, tmp_path / "agw-seed3", None)
    assert (stage, folder) == ("train-agw", tmp_path / "agw-seed3" / "agw")
    assert args[:2] == ["train-agw", "demo_agw.yaml"] and "agw.validate_every=25" in args and "train.seed=3" in args
    assert "--init-gan" not in args and args[args.index("--out") + 1] == str(folder)
    assert ablation.training_command(plan, caj, 0, tmp_path / "c", None)[2][1] == "demo_caj.yaml"
    stage, folder, args = ablation.training_command(plan, pfanet_caj, 0, tmp_path / "p", tmp_path / "gan.pt")
    assert stage == "train-joint" and args[1] == "demo_pfanet_caj.yaml" and "joint.validate_every=25" in args
    assert args[args.index("--init-gan") + 1] == str(tmp_path / "gan.pt")
    assert ablation.training_command(plan, pfanet, 0, tmp_path / "q", None)[2][1] == "demo_cpu.yaml"


def test_ablation_trains_one_gan_per_distinct_gan_settings_per_seed(tmp_path):
    """Variants whose recipe and overrides give the same GAN share the seed's train-gan run (`gan`); a variant
    recipe or override with other `gan.iterations` gets its own run, trained with that recipe and only its
    overrides that concern the GAN, never the default recipe's shorter or longer GAN."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import ablation  # the benchmark script, imported to check the runs it would make
    finally:
        sys.path.remove(str(BENCHMARKS))
    longer = tmp_path / "longer_gan.yaml"
    default_iterations = ablation.load_recipe("demo_cpu.yaml").gan.iterations
    longer.write_text(f"base: {REPO / 'recipes' / 'demo_cpu.yaml'}\nname: longer_gan\ngan:\n"
                      f"  iterations: {2 * default_iterations}\n")
    variants = [*ablation.VARIANT_SETS["baselines"], ablation.Variant("B", ("model.bng=false", "joint.iterations=5")),
                ablation.parse_variant("short=gan.iterations=50,model.mmm=false"),
                ablation.Variant("longer", recipe=str(longer)), ablation.Variant("grey", ablation.NO_GAN, gan=False)]
    plan = ablation.Plan(tmp_path, "demo_cpu.yaml", 20, [0], variants, ["train.log_every=5"], 1, 25, False)
    chosen = ablation.gan_runs(plan)
    assert set(chosen) == {"PFANet", "PFANet + CAJ augmentation", "B", "short", "longer"}  # AGW, CAJ, grey: none
    assert chosen["PFANet"] == chosen["PFANet + CAJ augmentation"] == chosen["B"] == ablation.GanRun("gan")
    short, own = chosen["short"], chosen["longer"]
    assert short.overrides == ("gan.iterations=50",) and short.recipe is None and short.name.startswith("gan-")
    assert own.recipe == str(longer) and own.overrides == () and len({short.name, own.name, "gan"}) == 3
    recipes = {name: ablation.load_recipe(run.recipe or plan.recipe, [*plan.overrides, *run.overrides])
               for name, run in chosen.items()}
    iterations = {name: recipe.gan.iterations for name, recipe in recipes.items()}
    assert iterations == {"PFANet": default_iterations, "PFANet + CAJ augmentation": default_iterations,
                          "B": default_iterations, "short": 50, "longer": 2 * default_iterations}
