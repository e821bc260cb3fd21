"""The bundle loader serves only what it can reproduce, and says why not in one line."""

import dataclasses
import json
import shutil

import pytest

from mmkp_edge import prompt
from mmkp_edge.bundle import Bundle, resolve_providers
from mmkp_edge.cli.predict import main
from mmkp_edge.errors import InputError
from mmkp_edge.manifest import RUNTIME_FAMILIES, SCHEMA_VERSION, Manifest
from tiny_onnx import build_bundle, rewrite_manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def bundle(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "bundle")


def _refused(path, *words):
    with pytest.raises(InputError) as info:
        Bundle.load(path)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    return message


def test_manifest_round_trip(bundle):
    m = Manifest.load(bundle)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.prompt.hash == prompt.PROMPT_HASH and m.schema_version == SCHEMA_VERSION
    loaded = Bundle.load(bundle, threads=1)
    assert loaded.providers == ["CPUExecutionProvider"]


def test_tampered_graph_is_refused(bundle):
    path = bundle / "decoder_model_merged.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                         # same size, different bytes
    path.write_bytes(bytes(data))
    _refused(bundle, "decoder_model_merged.onnx", "sha256")


def test_truncated_file_is_refused(bundle):
    path = bundle / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:100])
    _refused(bundle, "tokenizer.json", "size")


def test_unknown_schema_version_is_refused(bundle):
    rewrite_manifest(bundle, schema_version=SCHEMA_VERSION + 1)
    _refused(bundle, "schema_version", str(SCHEMA_VERSION + 1))


def test_missing_graph_file_is_refused(bundle):
    (bundle / "vision_encoder.onnx").unlink()
    _refused(bundle, "vision_encoder", "missing")


def test_graph_missing_from_manifest_is_refused(bundle):
    data = json.loads((bundle / "manifest.json").read_text())
    del data["graphs"]["embed_tokens"]
    rewrite_manifest(bundle, graphs=data["graphs"])
    _refused(bundle, "embed_tokens")


def test_bundle_that_failed_export_validation_is_refused_unless_unverified(bundle):
    rewrite_manifest(bundle, validation={"status": "failed", "agreement": 0.375})
    _refused(bundle, "failed export validation", "--no-verify")
    assert Bundle.load(bundle, threads=1, verify=False).manifest.validation["status"] == "failed"


def test_unknown_family_is_refused_at_load_and_cannot_be_written(bundle, capsys):
    rewrite_manifest(bundle, family="llava_next")
    message = _refused(bundle, "family", "'llava_next'", *RUNTIME_FAMILIES)
    assert message.count("llava_next") == 1
    with pytest.raises(InputError, match="family"):
        Bundle.load(bundle, verify=False)                # not a check --no-verify can skip
    with pytest.raises(SystemExit) as info:
        main(["--bundle", str(bundle), "--no-image", "hello"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "llava_next" in err and "\n" not in err
    manifest = Manifest.load(build_bundle(bundle.parent / "fresh"))
    with pytest.raises(InputError, match="family"):      # export's save() validates the same way
        dataclasses.replace(manifest, family="llava_next").save(bundle.parent / "fresh")
    assert Manifest.load(bundle.parent / "fresh").family in RUNTIME_FAMILIES


def test_unknown_prompt_hash_is_refused(bundle):
    rewrite_manifest(bundle, prompt={"id": "mmkp-v0", "hash": "0123456789abcdef"})
    _refused(bundle, "prompt", "0123456789abcdef", prompt.PROMPT_HASH)


def test_missing_manifest_key_and_bad_json_are_one_line(bundle):
    data = json.loads((bundle / "manifest.json").read_text())
    del data["model"]
    (bundle / "manifest.json").write_text(json.dumps(data))
    _refused(bundle, "model")
    (bundle / "manifest.json").write_text("{not json")
    _refused(bundle, "invalid JSON")


def test_not_a_bundle_and_no_bundle(tmp_path, monkeypatch):
    _refused(tmp_path, "manifest")
    monkeypatch.delenv("MMKP_BUNDLE", raising=False)
    _refused(None, "MMKP_BUNDLE")


def test_unavailable_provider_is_refused():
    with pytest.raises(InputError, match="not available"):
        resolve_providers("no-such-provider")
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_cli_reports_a_bad_bundle_in_one_line_with_exit_2(bundle, capsys):
    rewrite_manifest(bundle, schema_version=99)
    with pytest.raises(SystemExit) as info:
        main(["--bundle", str(bundle), "--no-image", "hello"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmkp-predict: error:") and "schema_version" in err and "\n" not in err
