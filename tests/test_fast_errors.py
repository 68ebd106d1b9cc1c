"""Bad options fail before anything is built or loaded (bt13b finding 7, and the one-line ``tune`` usage error)."""

from __future__ import annotations

import pytest
from cli_helpers import run

from heterag.collections.collection import list_collections


def _never(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} started before the options were checked")
    return fail


@pytest.mark.parametrize("generator", ["local", "transformers"])
def test_ask_checks_the_generator_model_before_building_the_demo(capsys, monkeypatch, generator, heterag_home):
    import corpora.demo
    import heterag.collections.collection

    monkeypatch.setattr(corpora.demo, "open_demo", _never("the demo build"))
    monkeypatch.setattr(heterag.collections.collection, "open_collection", _never("opening a collection"))
    code, out, err = run(capsys, "ask", "hi", "--generator", generator, "--model", "nosuchmodel")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "nosuchmodel" in err and "does not exist" in err and "never downloaded" in err
    assert list_collections() == []


def test_train_image_encoder_checks_its_folders_first(capsys, monkeypatch, tmp_path):
    import heterag.cli.train_image_encoder

    monkeypatch.setattr(heterag.cli.train_image_encoder, "train_image_encoder", _never("training"))
    code, _, err = run(capsys, "train-image-encoder", "--folder", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "w"))
    assert code == 2 and err.count("\n") == 1 and "nonexistent does not exist" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("target", ["/nonexistent/beir", "nosuchcollection"])
def test_tune_names_a_missing_folder_or_collection_before_loading_a_model(capsys, monkeypatch, tmp_path, target):
    import heterag.collections.collection

    monkeypatch.setattr(heterag.collections.collection, "load_text_encoder", _never("loading the text encoder"))
    code, _, err = run(capsys, "tune", target, "--out", str(tmp_path / "a"))
    assert code == 2 and err.count("\n") == 1
    assert f"{target!r}: no folder and no collection of that name" in err and "bad collection name" not in err


def test_tune_with_an_unknown_pairs_choice_is_one_line_listing_the_choices(capsys, tmp_path):
    code, _, err = run(capsys, "tune", "x", "--out", str(tmp_path / "a"), "--pairs", "nosuch")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("heterag: error: tune: ") and "'nosuch'" in err and "'beir', 'pubmedqa', 'pseudo'" in err
