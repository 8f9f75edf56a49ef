"""Our hub entries from stock tools, in interpreters that never ``import s3prl_vgs``.

The start-up hook (``s3prl_vgs_startup.pth``, installed by ``pip install -e .``)
is what makes them visible: ``s3prl.nn.S3PRLUpstream`` in a fresh
interpreter, and ESPnet's stock ``espnet2.bin.asr_train`` with
``--frontend s3prl`` (a ``--dry_run``: parser, model build with the frontend,
config written). Both interpreters run side by side to keep the wall time down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml

import s3prl_vgs
from s3prl_vgs.upstream.export import export_speech_only

FRESH = r"""
import json, sys
assert "s3prl_vgs" not in sys.modules, "imported before s3prl"
from s3prl.nn import S3PRLUpstream
import s3prl.hub as hub
import s3prl.util.download as dl
import torch
model_dir, url_root, cache = sys.argv[1:4]
report = {}
dl.set_dir(cache)
up = S3PRLUpstream("vg_mim_local", path_or_url=model_dir).eval()
with torch.no_grad():
    hs, hs_len = up(torch.randn(2, 16000), torch.tensor([16000, 8000]))
report["num_layers"], report["lens"] = up.num_layers, [int(x) for x in hs_len[0]]
report["downsample_rates"] = up.downsample_rates
# _url: a URL of a model directory, and an HF-style repo id ($HF_ENDPOINT), through s3prl's download cache
a = hub.vg_mim_url(ckpt=url_root + "/plain/vg_mim")
import os
os.environ["HF_ENDPOINT"] = url_root + "/hf"
b = hub.vg_mim_custom(ckpt="someone/vg-mim-tiny@v1")
x = torch.randn(12000)
with torch.no_grad():
    report["url_same"] = all(torch.equal(p, q) for p, q in zip(a([x])["hidden_states"], up.upstream([x])["hidden_states"]))
    report["repo_same"] = all(torch.equal(p, q) for p, q in zip(b([x])["hidden_states"], up.upstream([x])["hidden_states"]))
m0 = {p.name: p.stat().st_mtime_ns for p in dl.get_dir().iterdir() if p.is_file()}
hub.vg_mim_url(ckpt=url_root + "/plain/vg_mim")  # cached: not fetched again
report["refetched"] = m0 != {p.name: p.stat().st_mtime_ns for p in dl.get_dir().iterdir() if p.is_file()}
report["cached_files"] = sorted(p.name.split(".", 1)[1] for p in dl.get_dir().iterdir() if p.is_file() and not p.name.endswith(".lock"))
# s3prl's loops over options(): every one of our plain names fails with a one-line ValueError naming ckpt
ours = [n for n in S3PRLUpstream.available_names(only_registered_ckpt=True) if getattr(getattr(hub, n), "__module__", "").startswith("s3prl_vgs")]
errors = {}
for n in ours:
    try:
        getattr(hub, n)()
    except ValueError as e:
        errors[n] = str(e)
report["plain"], report["errors"] = ours, errors
report["s3prl_names_intact"] = getattr(hub, "hubert").__module__.startswith("s3prl.")
import s3prl_vgs_startup, s3prl_vgs.upstream as u
s3prl_vgs_startup.install(); s3prl_vgs_startup.install()
report["hooks"] = sum(type(f).__name__ == "S3PRLImportHook" for f in sys.meta_path)
report["register_again"] = u.register()
print("REPORT", json.dumps(report))
"""


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory):
    root = tmp_path_factory.mktemp("ups")
    out = {}
    for family in ("fast_vgs", "vg_mim"):
        torch.manual_seed(0)
        full = s3prl_vgs.build_model(family, preset="tiny").save(root / f"{family}_full")
        out[family] = export_speech_only(full, root / family)
    return root, out


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("S3PRL_VGS_NO_STARTUP", None)
    return env


def test_startup_hook_is_installed_and_cheap():
    pth = Path(sysconfig.get_paths()["purelib"]) / "s3prl_vgs_startup.pth"
    assert pth.is_file(), "run `pip install -e .` (make install): it writes the start-up hook"
    code = "import json, sys; print(json.dumps(sorted(n for n in sys.modules if n.startswith(('torch', 's3prl')))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    # The hook imports nothing heavy at start-up: only itself.
    assert json.loads(out.stdout) == ["s3prl_vgs_startup"]


def test_stock_tools_find_our_entries_without_importing_us(upstreams, tmp_path):
    root, dirs = upstreams
    # A web root for the _url entries: a plain directory URL and an HF-style resolve/<rev> layout.
    web = tmp_path / "web"
    for sub in ("plain/vg_mim", "hf/someone/vg-mim-tiny/resolve/v1"):
        (web / sub).mkdir(parents=True)
        for f in ("config.yaml", "model.safetensors"):
            (web / sub / f).write_bytes((dirs["vg_mim"] / f).read_bytes())
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blank>\n<unk>\na\nb\n<sos/eos>\n")
    frontend_conf = yaml.safe_dump({"frontend_conf": {"upstream": "fast_vgs_local", "path_or_url": str(dirs["fast_vgs"])},
                                    "multilayer_feature": True}, default_flow_style=True).strip()
    espnet = subprocess.Popen(
        [sys.executable, "-m", "espnet2.bin.asr_train", "--dry_run", "true", "--ngpu", "0", "--token_list", str(tokens),
         "--output_dir", str(tmp_path / "asr"), "--frontend", "s3prl", "--frontend_conf", frontend_conf,
         "--normalize", "none", "--encoder", "transformer",
         "--encoder_conf", "{output_size: 16, attention_heads: 2, linear_units: 32, num_blocks: 1, input_layer: linear}",
         "--decoder", "transformer", "--decoder_conf", "{attention_heads: 2, linear_units: 32, num_blocks: 1}",
         "--freeze_param", "frontend.upstream"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path)
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(dirs["vg_mim"]), web.as_uri(), str(tmp_path / "cache")],
                           capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
    espnet_log, _ = espnet.communicate(timeout=600)

    assert fresh.returncode == 0, (fresh.stdout + fresh.stderr)[-4000:]
    report = json.loads(fresh.stdout.split("REPORT ", 1)[1])
    with torch.no_grad():
        n_layers = len(s3prl_vgs.load_model(dirs["vg_mim"]).encode_audio(torch.randn(1, 16000)).hidden_states)
    assert report["num_layers"] == n_layers > 2 and report["downsample_rates"] == [320] * n_layers
    assert report["lens"] == [50, 25]
    assert report["url_same"] and report["repo_same"] and not report["refetched"]
    assert report["cached_files"] == ["config.yaml", "config.yaml", "model.safetensors", "model.safetensors"]
    assert set(report["plain"]) == {"fast_vgs", "vg_mim", "vg_hubert"}
    for name, msg in report["errors"].items():
        assert "\n" not in msg and "ckpt=MODEL_DIR" in msg and f"{name}_local" in msg
    assert set(report["errors"]) == set(report["plain"])
    assert report["s3prl_names_intact"] and report["hooks"] == 1 and report["register_again"] == []

    assert espnet.returncode == 0, espnet_log[-4000:]
    config = yaml.safe_load((tmp_path / "asr" / "config.yaml").read_text())
    assert config["frontend"] == "s3prl"
    assert config["frontend_conf"]["frontend_conf"]["upstream"] == "fast_vgs_local"
    frozen = [line for line in espnet_log.splitlines() if "requires_grad = False" in line]
    assert any("frontend.upstream.upstream.model.trunk." in line for line in frozen)
    # Every upstream parameter is listed when frozen: the speech branch only, no image side.
    assert not [line for line in frozen if any(f"upstream.model.{p}." in line for p in ("cross_encoder", "visn_fc", "trm"))]
