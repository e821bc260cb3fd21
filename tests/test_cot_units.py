"""CoT-data building blocks without a server: the answer filter, reading teacher replies, the
versioned template, backoff, config validation and the teacher plug-in point."""

import email.utils
import json
import random
import sys
import textwrap
from pathlib import Path

import pytest

from mmkp_edge.errors import InputError
from train.cot import template
from train.cot.backoff import parse_retry_after, retry_delay, retryable_status
from train.cot.command import main
from train.cot.config import CotDataConfig
from train.cot.filter import judge
from train.cot.records import read_records
from train.cot.run import run_cot_data
from train.cot.teachers import available
from train.cot.template import read_reply, user_prompt


def verdict(answer, gold, keep="exact", rationale="because"):
    return judge(answer, gold, rationale=rationale, has_answer=True, keep=keep)


def test_exact_compares_stemmed_sets_in_any_order():
    assert verdict(["running shoe", "marathons"], ["marathon", "running shoes"]).kept
    v = verdict(["marathon", "cats"], ["marathon", "running shoes"])
    assert (v.kept, v.reason) == (False, "mismatch")
    assert v.detail == "missing: running shoes; extra: cats"
    assert not verdict(["marathon"], ["marathon", "running shoes"]).kept


def test_gold_goes_through_the_parser_like_the_answer():
    assert verdict(read_reply("<think>w</think><answer>#StormHour</answer>").keyphrases,
                   ["StormHour"]).kept
    assert verdict(["storm hour"], ["#StormHour"]).kept
    assert verdict(read_reply("<think>w</think><answer>rock n roll</answer>").keyphrases,
                   ["rock,n,roll"]).kept                 # rendered as the prompt shows it


def test_top1_and_any_policies():
    gold = ["beach", "summer", "sun"]
    assert verdict(["beach", "party"], gold, "top1").kept
    assert verdict(["summer"], gold, "top1").reason == "top1-missing"
    assert verdict(["party", "sun"], gold, "any").kept
    assert verdict(["party"], gold, "any").reason == "no-overlap"


def test_rejections_without_answer_rationale_or_gold():
    assert judge([], ["a"], rationale="x", has_answer=False).reason == "no-answer"
    assert judge(["a"], ["a"], rationale=" ", has_answer=True).reason == "no-rationale"
    assert judge(["a"], [], rationale="x", has_answer=True).reason == "no-gold"


def test_read_reply_is_lenient_about_tags():
    r = read_reply("Stripes and cars suggest a city.<answer>zebra crossing; city</answer>")
    assert (r.rationale, r.keyphrases, r.has_answer) == (
        "Stripes and cars suggest a city.", ["zebra crossing", "city"], True)
    r = read_reply("<think>a\n  b</think> #Beach, #SummerVibes")
    assert (r.rationale, r.keyphrases) == ("a b", ["beach", "summer vibes"])
    r = read_reply("beach; summer")                    # no span at all: not an answer
    assert not r.has_answer and r.keyphrases == []


def test_template_modes_and_version():
    gold = user_prompt("sunset", ["golden hour", "sky"], mode="gold", has_image=True)
    pred = user_prompt("sunset", ["golden hour", "sky"], mode="predict", has_image=False)
    assert "golden hour; sky" in gold and "image is attached" in gold
    assert "golden hour" not in pred and "no image" in pred
    assert gold.rstrip().endswith("same order, separated by ';'.")
    assert template.TEMPLATE_VERSION == f"{template.TEMPLATE_ID}-{template._template_hash()}"
    before = template._template_hash()
    template.SYSTEM += " Be brief."
    try:
        assert template._template_hash() != before     # any wording change → a new version
    finally:
        template.SYSTEM = template.SYSTEM.removesuffix(" Be brief.")


def test_retry_after_parsing():
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(30)


def test_backoff_doubles_with_jitter_is_capped_and_honours_retry_after():
    rng = random.Random(0)
    for attempt in range(1, 8):
        full = min(10.0, 0.5 * 2 ** (attempt - 1))
        assert full / 2 <= retry_delay(attempt, base=0.5, cap=10, rng=rng) <= full
    assert retry_delay(1, base=0.01, cap=10, retry_after=3.0, rng=rng) == 3.0
    assert retry_delay(1, base=0.01, cap=10, retry_after=3600, rng=rng) == 10
    assert [retryable_status(s) for s in (429, 500, 503, 400, 401, 404, 422)] == \
        [True, True, True, False, False, False, False]


def test_config_validation_and_set_overrides(tmp_path, capsys):
    posts = tmp_path / "p.jsonl"
    posts.write_text('{"id": "a", "text": "t", "keyphrases": ["k"]}\n')
    base = CotDataConfig(posts=str(posts), output=str(tmp_path / "o.jsonl"))
    assert base.validate() is base
    for bad, message in [({"samples": 3}, "temperature > 0"), ({"keep": "most"}, "keep must be"),
                         ({"output": str(posts)}, "must not be the posts"),
                         ({"posts": str(tmp_path / "nope")}, "posts file not found"),
                         ({"timeout": 0}, "timeout")]:
        with pytest.raises(InputError, match=message):
            base.replace(**bad).validate()
    for args, message in [(["--set", "nope=1"], "unknown config key 'nope'"),
                          (["--set", "timeout=soon"], "timeout: expected float"),
                          (["--set", "retries"], "key=value")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--posts", str(posts), "-o", str(tmp_path / "o.jsonl"), *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_recipe_then_flags_then_set(tmp_path, capsys):
    """A YAML recipe holds the run; flags and --set override it; the group exposes the command."""
    from train.cli import main as train_main
    posts = tmp_path / "p.jsonl"
    posts.write_text('{"id": "a", "text": "t", "keyphrases": ["k"]}\n')
    recipe = tmp_path / "cot.yaml"
    recipe.write_text(f"posts: {posts}\noutput: {tmp_path / 'o.jsonl'}\nteacher: nope\n"
                      "samples: 2\n")
    with pytest.raises(SystemExit):
        train_main(["cot-data", "--config", str(recipe)])
    assert "unknown teacher 'nope'" in capsys.readouterr().err   # the recipe was read
    with pytest.raises(SystemExit):
        train_main(["cot-data", "--config", str(recipe), "--teacher", "openai"])
    assert "samples=2 at temperature 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["cot-data", "--config", str(recipe), "--teacher", "openai",
                    "--set", "temperature=0.5", "--api-key-env", "MMKP_SURELY_UNSET_VAR"])
    assert "MMKP_SURELY_UNSET_VAR is not set" in capsys.readouterr().err
    assert train_main(["cot-data", "--help"]) == 0
    assert "Example" in capsys.readouterr().out


def test_a_new_teacher_is_one_module(tmp_path, monkeypatch):
    """Dropping `<name>_teacher.py` into the package registers `--teacher <name>`."""
    import train.cot
    (tmp_path / "echo_teacher.py").write_text(textwrap.dedent('''
        from train.cot.teachers import TeacherReply, Usage

        class Echo:
            name, max_in_flight = "echo", 3
            def __init__(self, model):
                self.model = model
            async def complete(self, request):
                kps = "; ".join(request.post.keyphrases)
                return TeacherReply(f"<think>{request.post.text}</think><answer>{kps}</answer>",
                                    Usage(1, 2))
            async def aclose(self):
                pass

        def build(config):
            return Echo(config.options["flavour"])
    '''))
    monkeypatch.setattr(train.cot, "__path__", [*train.cot.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "train.cot.echo_teacher", raising=False)
    assert "echo" in available() and "openai" in available()
    posts = tmp_path / "p.jsonl"
    rows = [{"id": f"p{i}", "text": f"t{i}", "keyphrases": ["k"]} for i in range(5)]
    posts.write_text("".join(json.dumps(r) + "\n" for r in rows)
                     + '{"id": "empty", "text": "no gold"}\n')
    out = tmp_path / "o.jsonl"
    summary = run_cot_data(CotDataConfig(posts=str(posts), output=str(out), teacher="echo",
                                         options={"flavour": "gold-echo"}))
    assert (summary["processed"], summary["kept"], summary["tokens"]["total"]) == (6, 5, 15)
    recs = {r["id"]: r for r in read_records(out)}
    assert recs["p3"]["rationale"] == "t3" and recs["p3"]["teacher"] == "echo"
    assert recs["p3"]["model"] == "gold-echo"
    assert recs["empty"]["reason"] == "no-gold" and recs["empty"]["attempts"] == 0


def test_the_http_teacher_path_does_not_load_torch():
    import subprocess
    code = ("import sys, train.cot.command, train.cot.run, train.cot.openai_teacher\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_a_perfect_teacher_is_kept_on_every_cmkp_post(cmkp_dir):
    """Echoing the gold exactly as the prompt shows it must pass `exact` on real data: the gold and
    the answer go through the same rendering and parser (commas, CamelCase, '#', duplicates)."""
    from mmkp_edge.posts import read_cmkp
    from mmkp_edge.prompt import answer_span
    posts = read_cmkp(cmkp_dir / "test_src.txt")
    rejected = [p.id for p in posts
                if not judge(read_reply(f"<think>r</think>{answer_span(p.keyphrases)}").keyphrases,
                             p.keyphrases, rationale="r", has_answer=True).kept]
    assert len(posts) > 5000 and rejected == []
