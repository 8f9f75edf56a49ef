"""espnet_recipes.bin.vgs_mean_results: sets side by side and the mean of their recalls (the Places protocol)."""

import json

import pytest

from espnet_recipes.bin.vgs_mean_results import main


def _results(a2i, i2a, methods=("coarse", "fine")):
    return {"n_audio": 10, "n_image": 10,
            "methods": {m: {"A2I": dict(zip(("1", "5", "10"), a2i)), "I2A": dict(zip(("1", "5", "10"), i2a)),
                            "mean_R@1": (a2i[0] + i2a[0]) / 2, "ms_per_query": 1.0} for m in methods}}


def test_mean_of_two_sets(tmp_path, capsys):
    (tmp_path / "seen.json").write_text(json.dumps(_results((10.0, 30.0, 50.0), (20.0, 40.0, 60.0))))
    (tmp_path / "unseen.json").write_text(json.dumps(_results((0.0, 10.0, 30.0), (10.0, 20.0, 40.0), ("coarse",))))
    out = tmp_path / "dev" / "results.json"
    assert main(["--out", str(out), f"dev_seen={tmp_path / 'seen.json'}", f"dev_unseen={tmp_path / 'unseen.json'}"]) == 0
    r = json.loads(out.read_text())
    assert set(r["mean"]) == {"coarse"}  # only the methods both sets have
    assert r["mean"]["coarse"]["A2I"] == {"1": 5.0, "5": 20.0, "10": 40.0}
    assert r["mean"]["coarse"]["I2A"] == {"1": 15.0, "5": 30.0, "10": 50.0}
    assert r["mean"]["coarse"]["mean_R@1"] == 10.0
    assert r["sets"]["dev_unseen"]["coarse"]["A2I"]["1"] == 0.0
    md = (tmp_path / "dev" / "results.md").read_text()
    assert "| coarse | **mean** | 5.00 | 20.00 | 40.00 | 15.00 | 30.00 | 50.00 | 10.00 |" in md
    assert "| coarse | dev_seen | 10.00 |" in md


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(_results((1.0, 2.0, 3.0), (1.0, 2.0, 3.0))))
    (tmp_path / "b.json").write_text("{not json")
    cases = [
        ([f"a={tmp_path / 'a.json'}", f"b={tmp_path / 'b.json'}"], "b.json: unreadable results of b"),
        ([f"a={tmp_path / 'a.json'}", f"c={tmp_path / 'missing.json'}"], "missing.json: unreadable results of c"),
        ([f"a={tmp_path / 'a.json'}"], "need at least two sets"),
        ([f"a={tmp_path / 'a.json'}", "nonsense"], "'nonsense': expected NAME=RESULTS.json"),
    ]
    for sets, message in cases:
        assert main(["--out", str(tmp_path / "o.json"), *sets]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("bad", [{}, {"methods": {}}, []])
def test_non_results_are_refused(tmp_path, capsys, bad):
    (tmp_path / "a.json").write_text(json.dumps(_results((1.0, 2.0, 3.0), (1.0, 2.0, 3.0))))
    (tmp_path / "x.json").write_text(json.dumps(bad))
    assert main(["--out", str(tmp_path / "o.json"), f"a={tmp_path / 'a.json'}", f"x={tmp_path / 'x.json'}"]) == 1
    assert "x.json: not vgs-evaluate results" in capsys.readouterr().err
