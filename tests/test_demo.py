import json

from hero.demo import main


def test_demo_runs_the_whole_loop_small(tmp_path):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--eval-n", "4", "--set", "budget=8", "--set", "images_per_round=4",
            "--set", "sampler.steps=3", "--set", "hero.encoder_epochs=2", "--set", "pg.timesteps_per_traj=2"]
    main(args)
    result = json.loads((out / "eval.json").read_text())
    assert {"base_plain", "plain", "guided", "base_guided"} <= result.keys()
    assert (out / "before_after.png").is_file() and (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    main(args)  # a finished demo is not trained again, only re-measured
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
