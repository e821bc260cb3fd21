"""`mmkp-score` end to end: golden JSON on CMKP, JSONL predictions by id (raw text parsed), and
one-line errors with exit code 2 for every kind of bad input."""

import json
import subprocess
import sys

import pytest

from mmkp_edge.cli.score import main

TOY_GOLD = "a b c d<sep>a b;c<sep>u1\nx z<sep>x;y<sep>u2\nfoo<sep>cats<sep>u3\n"
TOY_PRED = "a b;d;c;a b\nx\n\n"


def run(capsys, *args):
    code = main(list(map(str, args)))
    return code, capsys.readouterr().out


def test_cmkp_golden_values_through_the_command(cmkp_dir, capsys):
    code, out = run(capsys, cmkp_dir / "test_src.txt", cmkp_dir / "cmkp_best_pred.txt",
                    "--ocr", cmkp_dir / "test_ocr_final.txt", "--json")
    res = json.loads(out)
    assert code == 0
    assert [round(res["all"][k], 5) for k in ("f1@1", "f1@3", "map@5")] == [0.47130, 0.33224, 0.52261]
    assert [round(res["present"][k], 5) for k in ("f1@1", "f1@3")] == [0.82502, 0.79918]
    assert [round(res["absent"][k], 5) for k in ("f1@1", "f1@3")] == [0.28103, 0.22401]
    assert {"all", "present", "absent", "strict", "preds_per_post"} <= set(res)


def test_toy_table_and_train_gold(tmp_path, capsys):
    (tmp_path / "g.txt").write_text(TOY_GOLD)
    (tmp_path / "p.txt").write_text(TOY_PRED)
    (tmp_path / "train.txt").write_text("q<sep>a b;x<sep>u\n")
    code, out = run(capsys, tmp_path / "g.txt", tmp_path / "p.txt", "--json",
                    "--train-gold", tmp_path / "train.txt")
    res = json.loads(out)
    assert round(res["all"]["f1@1"], 5) == 0.44444 and round(res["all"]["map@5"], 5) == 0.44444
    assert res["seen"]["n_posts"] == 2 and res["unseen"]["n_posts"] == 3
    for subset in ("all", "present", "absent", "strict", "seen", "unseen"):
        assert set(res[subset]) >= {"f1@1", "f1@3", "f1@5", "map@5", "n_posts"}
    code, out = run(capsys, tmp_path / "g.txt", tmp_path / "p.txt")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["subset", "F1@1", "F1@3"]


def test_jsonl_predictions_match_by_id_and_parse_raw_text(tmp_path, capsys):
    (tmp_path / "g.txt").write_text(TOY_GOLD)
    records = [{"id": "g-3", "text": "<think>a cat</think><answer>#Cats; dog</answer>"},
               {"id": "g-1", "keyphrases": ["a b", "d", "c"]},
               {"id": "g-2", "keyphrases": "x"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    code, out = run(capsys, tmp_path / "g.txt", tmp_path / "p.jsonl", "--json")
    assert code == 0 and round(json.loads(out)["all"]["f1@1"], 5) == 0.80000


@pytest.mark.parametrize("gold, pred, message", [
    (b"", b"x\n", "g.txt: empty file"),
    (b"a\x00b<sep>k<sep>u\n", b"x\n", "g.txt:1: binary data"),
    (b"a<sep>k\n", b"x\n", "g.txt:1: expected 3 fields"),
    (b"caf\xe9<sep>k<sep>u\n", b"x\n", "g.txt:1: not UTF-8"),
    (TOY_GOLD.encode(), b"x\ny\n", "2 prediction lines but the gold file has 3"),
    (TOY_GOLD.encode(), b"x\n\xff\n", "p.txt:2: not UTF-8"),
    (TOY_GOLD.encode(), TOY_GOLD.encode(), "looks like a gold file"),
])
def test_bad_inputs_give_one_line_and_exit_2(tmp_path, gold, pred, message):
    (tmp_path / "g.txt").write_bytes(gold)
    (tmp_path / "p.txt").write_bytes(pred)
    out = subprocess.run([sys.executable, "-m", "mmkp_edge.cli.score", tmp_path / "g.txt",
                          tmp_path / "p.txt"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("records, message", [
    ([{"id": "g-1", "keyphrases": ["x"]}], "no prediction for gold post id 'g-2'"),
    ([{"id": i, "keyphrases": ["x"]} for i in ("g-1", "g-2", "g-3", "zz")], "'zz' is not a gold"),
    ([{"id": "g-1", "keyphrases": 3}], "needs 'keyphrases'"),
])
def test_jsonl_mismatches_name_the_first_one(tmp_path, capsys, records, message):
    (tmp_path / "g.txt").write_text(TOY_GOLD)
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "g.txt"), str(tmp_path / "p.jsonl")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
