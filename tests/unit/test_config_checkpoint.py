"""ConfigBase round trip and presets; model directories (save/load, errors)."""

from dataclasses import dataclass, field
from typing import Optional, Tuple

import pytest
import torch
import yaml

import s3prl_vgs
from s3prl_vgs.checkpoint import CheckpointError, load_model
from s3prl_vgs.config import ConfigBase, ConfigError


@dataclass
class Inner(ConfigBase):
    width: int = 4
    pretrained: Optional[str] = None


@dataclass
class Outer(ConfigBase):
    name: str = "x"
    sizes: Tuple[int, ...] = (1, 2)
    rate: float = 0.5
    inner: Inner = field(default_factory=Inner)
    PRESETS = {"small": {"inner": {"width": 2}}, "big": {"rate": 1}}


def test_yaml_round_trip_restores_types(tmp_path):
    cfg = Outer(sizes=(3, 4, 5), inner=Inner(width=7))
    cfg.to_yaml(tmp_path / "c.yaml")
    back = Outer.from_yaml(tmp_path / "c.yaml")
    assert back == cfg and isinstance(back.sizes, tuple) and isinstance(back.inner, Inner)
    assert Outer.preset("big").rate == 1.0 and isinstance(Outer.preset("big").rate, float)


def test_unknown_keys_and_presets_are_errors():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\]"):
        Outer.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match=r"Inner: unknown key\(s\) \['depth'\]"):
        Outer.from_dict({"inner": {"depth": 1}})
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        Outer.preset("huge")


def test_preset_overrides_merge_into_nested_configs():
    cfg = Outer.preset("small", inner={"pretrained": "some/dir"}, name="y")
    assert cfg.inner == Inner(width=2, pretrained="some/dir") and cfg.name == "y"


def test_model_directory_round_trip_and_offline_load(tmp_path):
    torch.manual_seed(0)
    model = s3prl_vgs.build_model("vg_mim", preset="tiny").eval()
    model.save(tmp_path / "m")
    meta = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert meta["model"] == "vg_mim" and meta["format_version"] == 1
    # A model trained from hub weights must load without the hub: pretrained is ignored on load.
    meta["config"]["audio"]["pretrained"] = "facebook/hubert-base-ls960"
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump(meta))
    loaded = load_model(tmp_path / "m").eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_model_directory_errors_name_the_file(tmp_path):
    torch.manual_seed(0)
    s3prl_vgs.build_model("vg_mim", preset="tiny").save(tmp_path / "m")
    with pytest.raises(CheckpointError, match="config.yaml: missing"):
        load_model(tmp_path / "nothing")
    cfg = tmp_path / "m" / "config.yaml"
    meta = yaml.safe_load(cfg.read_text())
    meta["config"]["image"]["hidden_size"] = 2 * meta["config"]["image"]["hidden_size"]
    cfg.write_text(yaml.safe_dump(meta))
    with pytest.raises(CheckpointError, match="model.safetensors: weights do not fit the config: .*shape mismatches"):
        load_model(tmp_path / "m")
    meta["model"] = "no_such_model"
    cfg.write_text(yaml.safe_dump(meta))
    with pytest.raises(CheckpointError, match="unknown model 'no_such_model'"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"junk")
    meta["model"] = "vg_mim"
    meta["config"]["image"]["hidden_size"] //= 2
    cfg.write_text(yaml.safe_dump(meta))
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_model(tmp_path / "m")
