"""The web app's adapter setting (issue #10): ``app.py --adapter`` / ``adapter:`` in the YAML file
opens and creates the user's collections with that soft-prompt adapter; a collection embedded
without it is refused in one line that names ``heterag reembed``; a bad adapter is refused before
anything loads."""

from __future__ import annotations

import pytest

from heterag import Document, InvalidInputError, open_collection
from heterag.collections.collection import collection_info
from heterag.encoding.adapters import Adapter, encoder_weights_hash, init_prompt
from heterag.ui.config import AppConfig, ChatSettings, load_config_file, parse_args
from heterag.ui.service import ChatService, Done, Failed

NOTES = {"tides": "Tides are caused mainly by the gravitational pull of the Moon on the oceans.",
         "volcanoes": "Volcanoes erupt when magma rises through cracks in the crust of the Earth."}


@pytest.fixture()
def adapter_path(tmp_path, encoder):
    a = Adapter(kind="prompt", base_model=encoder.identity, base_hash=encoder_weights_hash(encoder), prompt_tokens=2,
                sides="query", hidden=int(encoder.dim), tensors={"prompt": init_prompt(encoder, 2, seed=3)})
    a.save(tmp_path / "tuned")
    return tmp_path / "tuned", a.hash


def test_app_setting_opens_and_creates_collections_with_the_adapter(adapter_path, encoder, tmp_path):
    path, digest = adapter_path
    plain = open_collection("plain")
    plain.ingest([Document.create(t, id=n, title=n) for n, t in NOTES.items()])
    plain.close()
    svc = ChatService(parse_args(["--adapter", str(path)]))
    try:
        events = list(svc.ask("What causes tides?", None, ChatSettings(collection="plain")))
        assert isinstance(events[-1], Failed) and "heterag reembed" in events[-1].message and "\n" not in events[-1].message
        pipe = svc.create_collection("tuned", view="naive")
        assert collection_info("tuned").adapter == f"adapters/{digest}"  # the new collection keeps a copy
        pipe.ingest([Document.create(t, id=n, title=n) for n, t in NOTES.items()])
        events = list(svc.ask("What causes tides?", None, ChatSettings(collection="tuned")))
        assert isinstance(events[-1], Done) and "Moon" in events[-1].answer.text
    finally:
        svc.close()
    # without the setting, each collection answers with its own (no adapter for "plain")
    svc = ChatService(AppConfig())
    try:
        assert isinstance(list(svc.ask("What causes tides?", None, ChatSettings(collection="plain")))[-1], Done)
    finally:
        svc.close()


def test_adapter_setting_from_yaml_and_bad_adapters_are_one_line(adapter_path, tmp_path):
    path, _ = adapter_path
    cfg = tmp_path / "app.yaml"
    cfg.write_text(f"adapter: {path}\n")
    assert load_config_file(cfg).adapter == str(path)
    assert parse_args(["--config", str(cfg)]).adapter == str(path)
    with pytest.raises(InvalidInputError, match="not found"):
        parse_args(["--adapter", str(tmp_path / "missing")])
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "broken.safetensors").write_bytes(b"xx")
    with pytest.raises(InvalidInputError, match="corrupt"):
        parse_args(["--adapter", str(tmp_path / "broken")])
