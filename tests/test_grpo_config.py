"""Session config (TOML/JSON round trip, presets, validation) and prompt sets (formats, clear errors)."""
import json

import pytest

from promptecho.grpo.config import PRESETS, ConfigError, GRPOConfig, preset
from promptecho.grpo.prompts import PromptSetError, load_prompts
from promptecho.grpo.rewards import RewardError, build_reward, parse_spec


@pytest.mark.parametrize("ext", ["toml", "json"])
def test_config_round_trip(tmp_path, ext):
    c = GRPOConfig(algorithm="awm", lora_targets=["to_q", "to_v"], sde_window=[1, 3], lr=1e-3, kl_beta=0.02,
                   output_dir="x y/\"q\"")
    p = str(tmp_path / f"c.{ext}")
    c.save(p)
    assert GRPOConfig.load(p) == c


def test_presets_validate_and_preset_key_merges(tmp_path):
    for name in PRESETS:
        assert preset(name).validate()
    p = tmp_path / "c.toml"
    p.write_text('preset = "ShapesWorld quick"\nmax_steps = 7\n')
    c = GRPOConfig.load(str(p))
    assert c.max_steps == 7 and c.adapter == "shapesworld" and c.lr == PRESETS["ShapesWorld quick"]["lr"]


@pytest.mark.parametrize("bad, msg", [
    ({"group_size": 1}, "group_size"), ({"algorithm": "ppo"}, "algorithm"), ({"bogus": 1}, "unknown config keys"),
    ({"noise_level": 0.0}, "noise_level"), ({"sde_window": [3, 2]}, "sde_window"), ({"adv_mode": "z"}, "adv_mode")])
def test_config_errors_name_the_field(tmp_path, bad, msg):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=msg):
        GRPOConfig.load(str(p))


def test_config_parse_error_is_clear(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("lr = = 3\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        GRPOConfig.load(str(p))
    with pytest.raises(ConfigError, match="preset"):
        preset("nope")


def test_prompt_formats(tmp_path):
    (tmp_path / "a.txt").write_text("a red cat\n a blue dog \n")
    (tmp_path / "b.jsonl").write_text('{"prompt": "one"}\n\n{"caption": "two", "x": 1}\n')
    (tmp_path / "c.csv").write_text('id,caption\n1,"hello, world"\n2,bye\n')
    assert load_prompts(str(tmp_path / "a.txt")) == ["a red cat", "a blue dog"]
    assert load_prompts(str(tmp_path / "b.jsonl")) == ["one", "two"]
    assert load_prompts(str(tmp_path / "c.csv")) == ["hello, world", "bye"]


def test_prompt_validation_reports_each_problem(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("ok\n\nok\n" + "x" * 50 + "\n")
    with pytest.raises(PromptSetError) as e:
        load_prompts(str(p), max_chars=20)
    s = str(e.value)
    assert "3 invalid" in s and "line 2: empty" in s and "line 3: duplicate of line 1" in s and "line 4: prompt has 50" in s
    with pytest.raises(PromptSetError, match="caption"):
        (tmp_path / "q.jsonl").write_text('{"text": "x"}\n')
        load_prompts(str(tmp_path / "q.jsonl"))
    with pytest.raises(PromptSetError, match="unsupported"):
        (tmp_path / "q.md").write_text("x")
        load_prompts(str(tmp_path / "q.md"))
    with pytest.raises(PromptSetError, match="not found"):
        load_prompts(str(tmp_path / "none.txt"))


def test_reward_specs_and_combination():
    assert parse_spec("promptecho:1+vqascore:0.5") == {"promptecho": 1.0, "vqascore": 0.5}
    with pytest.raises(RewardError, match="unknown reward"):
        parse_spec("clip")
    with pytest.raises(RewardError, match="weight"):
        parse_spec("promptecho:abc")
    a = lambda ims, ps: [1.0, 2.0]  # noqa: E731
    b = lambda ims, ps: [10.0, 0.0]  # noqa: E731
    f = build_reward("a:2+b:0.5", custom={"a": a, "b": b})
    assert f([None, None], ["p", "q"]) == [7.0, 4.0]


def test_preset_is_a_copy_and_the_two_proof_recipes_differ_only_in_their_algorithm_knobs():
    """Editing a session's config never edits a preset (they share list values); the AWM and Flow-GRPO proof presets
    share LoRA, sampler and lr and differ only where the README's trust-region runs differ."""
    awm = preset("ShapesWorld proof")
    awm.lora_targets.append("proj_in")
    assert "proj_in" not in preset("ShapesWorld proof").lora_targets
    a, g = preset("ShapesWorld proof").to_dict(), preset("ShapesWorld proof Flow-GRPO").to_dict()
    assert {k for k in a if a[k] != g[k]} == {"algorithm", "ema_kl_beta", "kl_beta", "sde_window"}
    assert (a["algorithm"], a["ema_kl_beta"], a["kl_beta"]) == ("awm", 10.0, 0.0)
    assert (g["algorithm"], g["ema_kl_beta"], g["kl_beta"], g["sde_window"]) == ("grpo", 0.0, 0.04, [0, 5])
    assert "ff.net.2" in a["lora_targets"] and "proj_out" in g["lora_targets"]
