"""mmkp-export refuses clearly (one line, exit 2, nothing written) before any heavy work, and its
building blocks keep their contracts: graph I/O names and axes, the int8 settings, the tokenizer
check."""

import json

import pytest

from export.cli import main
from export.graphs import graph_io
from export.quantize import Int8Config
from export.source import check_tokenizer
from export.wrappers import DecoderShape
from mmkp_edge import prompt
from mmkp_edge.errors import InputError
from train.tiny import TinyConfig, build_tokenizer


def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("mmkp-export: error:")
    return err[-1]


def test_refuses_existing_output_without_overwrite(tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    msg = _refused(capsys, [str(tmp_path / "nowhere"), "-o", str(out)])
    assert "already exists" in msg and "--overwrite" in msg
    assert (out / "keep.txt").read_text() == "x"


def test_refuses_to_overwrite_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    msg = _refused(capsys, [str(tmp_path / "nowhere"), "-o", str(out), "--overwrite"])
    assert "not a bundle folder" in msg
    assert (out / "thesis.tex").exists()


def test_refuses_run_dir_without_adapter_or_checkpoint(tmp_path, capsys):
    run = tmp_path / "runs" / "sft" / "empty"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    msg = _refused(capsys, [str(run), "-o", str(tmp_path / "b")])
    assert "adapter" in msg and "checkpoint" in msg
    assert not (tmp_path / "b").exists()


def test_refuses_unsupported_model_type(tmp_path, capsys):
    ckpt = tmp_path / "llama"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    msg = _refused(capsys, [str(ckpt), "-o", str(tmp_path / "b")])
    assert "llama" in msg and "idefics3" in msg
    assert not (tmp_path / "b").exists()


def test_refuses_conflicting_precisions(tmp_path, capsys):
    msg = _refused(capsys, [str(tmp_path), "-o", str(tmp_path / "b"), "--int8", "--fp16"])
    assert "--int8" in msg and "--fp16" in msg
    msg = _refused(capsys, [str(tmp_path), "-o", str(tmp_path / "b"), "--q-bits", "4"])
    assert "--mlx" in msg


def test_refuses_agreement_outside_unit_interval(tmp_path, capsys):
    msg = _refused(capsys, [str(tmp_path), "-o", str(tmp_path / "b"), "--int8",
                            "--min-agreement", "1.5"])
    assert "min_agreement" in msg


def test_tokenizer_without_prompt_tags_is_refused(monkeypatch):
    import train.tiny

    good = build_tokenizer(TinyConfig(vocab_size=400))
    ids = check_tokenizer(good)
    assert set(ids) == set(prompt.SPECIAL_TOKENS) and len(set(ids.values())) == 4
    monkeypatch.setattr(train.tiny, "TAG_TOKENS", ())
    bare = build_tokenizer(TinyConfig(vocab_size=400))
    with pytest.raises(InputError, match="lacks the prompt's tokens"):
        check_tokenizer(bare)


def test_graph_io_names_follow_transformers_js():
    io = graph_io(DecoderShape(num_layers=2, num_kv_heads=1, head_dim=8, hidden_size=16,
                               vocab_size=50))
    dec = io["decoder_model_merged"]
    assert dec.inputs[:3] == ("inputs_embeds", "attention_mask", "position_ids")
    assert dec.inputs[3:] == ("past_key_values.0.key", "past_key_values.0.value",
                              "past_key_values.1.key", "past_key_values.1.value")
    assert dec.outputs == ("logits", "present.0.key", "present.0.value", "present.1.key",
                           "present.1.value")
    assert dec.axes["past_key_values.1.value"] == {0: "batch_size", 2: "past_sequence_length"}
    assert io["vision_encoder"].axes["pixel_values"] == {0: "num_images"}
    assert io["embed_tokens"].axes["input_ids"] == {0: "batch_size", 1: "sequence_length"}


@pytest.mark.parametrize("bad", [dict(block_size=8), dict(block_size=128), dict(accuracy_level=7)])
def test_int8_config_rejects_unsupported_settings(bad):
    with pytest.raises(ValueError):
        Int8Config(**bad).validate()
    for block in (16, 32, 64):
        assert Int8Config(block_size=block).validate().block_size == block


def test_agreement_probe_takes_real_posts_text_only_where_their_image_is_absent(tmp_path):
    from export.validate import ValidateConfig, agreement_probe

    posts = tmp_path / "posts.jsonl"
    posts.write_text("\n".join(json.dumps(r) for r in (
        {"id": "a", "text": "storm tonight", "image": "gone.jpg", "keyphrases": ["storm"]},
        {"id": "b", "text": "happy birthday", "keyphrases": ["birthday"]},
        {"id": "c", "text": "cats", "keyphrases": ["cat"]})) + "\n")
    got = agreement_probe(tmp_path / "probe", ValidateConfig(probe_file=str(posts), agreement_posts=2))
    assert [p.id for p in got] == ["a", "b"]
    assert all(p.image is None and p.missing_image is None for p in got)
    synthetic = agreement_probe(tmp_path / "probe", ValidateConfig(agreement_posts=20))
    assert len(synthetic) == 20 and len({p.text for p in synthetic}) == 20   # 20 distinct texts
