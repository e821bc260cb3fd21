"""Low-overlap split: no leakage, sizes honoured, achieved unseen ratio within tolerance and measured
truthfully, same seed → same split; unreachable targets and bad inputs fail with one line."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmkp_edge.cli.data import main
from mmkp_edge.data.split import SplitConfig, split_pool
from mmkp_edge.data.synthetic import synthetic_pool
from mmkp_edge.errors import InputError
from mmkp_edge.phrases import stem_key
from mmkp_edge.posts import Post, read_jsonl, write_jsonl


def unseen_ratio(train, test):
    """Independent recount: test instances (distinct stems per post) whose stem is no train label."""
    labels = {stem_key(k) for p in train for k in p.keyphrases}
    inst = [key for p in test for key in dict.fromkeys(stem_key(k) for k in p.keyphrases)]
    return sum(key not in labels for key in inst) / len(inst)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(300, 1500), pool_seed=st.integers(0, 10_000), seed=st.integers(0, 10_000),
       ratio=st.sampled_from([0.0, 0.05, 0.2, 0.4]), test=st.sampled_from([0.1, 0.2, 100]),
       train=st.sampled_from([None, 0.5]))
def test_split_invariants(n, pool_seed, seed, ratio, test, train):
    pool = synthetic_pool(n, seed=pool_seed)
    cfg = SplitConfig(unseen_ratio=ratio, test=test, valid=0.1, train=train, seed=seed, tolerance=0.05)
    try:
        splits, report = split_pool(pool, cfg, progress=False)
    except InputError as exc:                       # allowed only for an unreachable ratio
        assert "not reachable" in str(exc)
        return
    ids = {name: [p.id for p in items] for name, items in splits.items()}
    all_ids = [i for items in ids.values() for i in items]
    assert len(all_ids) == len(set(all_ids))                          # no post in two splits
    assert set(all_ids) <= {p.id for p in pool}
    sizes = cfg.sizes(n)
    assert {k: len(v) for k, v in ids.items()} == {k: sizes[k] for k in ("train", "valid", "test")}
    achieved = unseen_ratio(splits["train"], splits["test"])
    assert achieved == pytest.approx(report["achieved"]["test_unseen_instance_ratio"])
    assert abs(achieved - ratio) <= cfg.tolerance
    again, _ = split_pool(pool, cfg, progress=False)
    assert {k: [p.id for p in v] for k, v in again.items()} == ids   # same seed, same split


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5])
def test_ratio_reached_on_a_realistic_pool(ratio):
    pool = synthetic_pool(5000, seed=7)
    splits, report = split_pool(pool, SplitConfig(unseen_ratio=ratio, seed=1), progress=False)
    assert abs(unseen_ratio(splits["train"], splits["test"]) - ratio) <= 0.02
    assert abs(report["achieved"]["valid_unseen_instance_ratio"] - ratio) <= 0.05
    assert report["within_tolerance"] and report["sizes"]["test"] == 500
    if ratio == 0.0:
        assert report["held_out_keyphrases"] == 0


def test_held_out_keyphrases_have_no_train_post_and_multi_keyphrase_posts_move_whole():
    pool = synthetic_pool(3000, seed=3)
    splits, _ = split_pool(pool, SplitConfig(unseen_ratio=0.3, seed=2), progress=False)
    train_labels = {stem_key(k) for p in splits["train"] for k in p.keyphrases}
    eval_posts = splits["test"] + splits["valid"]
    unseen = {stem_key(k) for p in eval_posts for k in p.keyphrases} - train_labels
    # a post is wholly in one split, so no train post carries an unseen keyphrase
    assert not any(stem_key(k) in unseen for p in splits["train"] for k in p.keyphrases)
    assert any(len(p.keyphrases) > 1 and {stem_key(k) for k in p.keyphrases} & unseen
               and {stem_key(k) for k in p.keyphrases} & train_labels for p in splits["test"])


def test_seed_changes_the_split():
    pool = synthetic_pool(2000, seed=5)
    a, _ = split_pool(pool, SplitConfig(unseen_ratio=0.2, seed=1), progress=False)
    b, _ = split_pool(pool, SplitConfig(unseen_ratio=0.2, seed=2), progress=False)
    assert [p.id for p in a["test"]] != [p.id for p in b["test"]]


def test_unreachable_ratio():
    # every post carries the one frequent keyphrase "news": nothing can be fully held out
    pool = [Post(id=str(i), text=f"post {i}", keyphrases=("news", f"tag{i % 50}")) for i in range(400)]
    with pytest.raises(InputError, match="not reachable"):
        split_pool(pool, SplitConfig(unseen_ratio=0.9), progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(unseen_ratio=1.5), "unseen-ratio"), (dict(tolerance=0), "tolerance"),
    (dict(test=2.5), "test"), (dict(test=5000), "do not fit"), (dict(test=0.0), "empty")])
def test_bad_config(kwargs, match):
    with pytest.raises(InputError, match=match):
        split_pool(synthetic_pool(100), SplitConfig(**kwargs), progress=False)


def test_cli_writes_splits_and_report(tmp_path, capsys):
    write_jsonl(synthetic_pool(2000, seed=11), tmp_path / "pool.jsonl")
    out = tmp_path / "out"
    assert main(["split", str(tmp_path / "pool.jsonl"), "--unseen-ratio", "0.25", "--test", "300",
                 "--valid", "0.1", "-o", str(out), "--seed", "4", "--quiet"]) == 0
    report = json.loads((out / "split.report.json").read_text())
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    assert len(test) == 300 and len(read_jsonl(out / "valid.jsonl")) == 200 and len(train) == 1500
    assert abs(unseen_ratio(train, test) - 0.25) <= 0.02
    assert report["achieved"]["test_unseen_instance_ratio"] == pytest.approx(unseen_ratio(train, test))
    assert json.loads(capsys.readouterr().out)["sizes"]["test"] == 300


@pytest.mark.parametrize("args,needle", [
    (["--unseen-ratio", "1.5"], "unseen-ratio"),
    (["--unseen-ratio", "0.2", "--test", "abc"], "--test"),
    (["--unseen-ratio", "0.99"], "not reachable"),
])
def test_cli_bad_inputs_exit_2_one_line(tmp_path, capsys, args, needle):
    pool = [Post(id=str(i), text=f"post {i}", keyphrases=("news", f"tag{i % 50}")) for i in range(400)]
    write_jsonl(pool, tmp_path / "pool.jsonl")
    with pytest.raises(SystemExit) as exc:
        main(["split", str(tmp_path / "pool.jsonl"), "-o", str(tmp_path / "o"), "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmkp-data: error:") and "\n" not in err and needle in err
    assert not (tmp_path / "o" / "train.jsonl").exists()


def test_cli_missing_file_and_malformed_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["split", str(tmp_path / "nope.jsonl"), "--unseen-ratio", "0.2", "-o", str(tmp_path / "o")])
    assert exc.value.code == 2 and "nope.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad_src.txt"
    bad.write_text("ok text<sep>kp<sep>x.jpg\nbroken line without separators\n")
    with pytest.raises(SystemExit) as exc:
        main(["split", str(bad), "--unseen-ratio", "0.2", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and f"{bad}:2:" in err[0]
