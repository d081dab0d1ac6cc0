"""Finding the base model: local folders, the Hugging Face cache, and the offline error."""

from __future__ import annotations

import pytest

from t2s_torch.tav.models import BaseModelNotFound, load_base_model, resolve_base_model


def test_a_local_folder_loads_every_part(tiny_sd):
    base = load_base_model(str(tiny_sd))
    assert base.path == tiny_sd
    assert base.unet.config.cross_attention_dim == base.text_encoder.config.hidden_size
    assert base.noise_scheduler.config.prediction_type == "epsilon"
    assert base.scheduler_config["set_alpha_to_one"] is False  # the file's, not DDPM's view
    assert base.tokenizer.model_max_length == 16


def test_an_uncached_hub_name_offline_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "text2sign-tests/no-such-stable-diffusion"
    with pytest.raises(BaseModelNotFound) as error:
        resolve_base_model(name)
    message = str(error.value)
    assert message.startswith(f"{name} is not in the local Hugging Face cache")
    assert "no internet" in message
    assert f"hf download {name}" in message and f"huggingface-cli download {name}" in message
    assert "--pretrained_model_name_or_path /path/to/folder" in message


def test_missing_and_incomplete_folders_are_named(tmp_path, tiny_sd):
    with pytest.raises(BaseModelNotFound, match="no such folder"):
        resolve_base_model(str(tmp_path / "nowhere" / "sd"))
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "vae").symlink_to(tiny_sd / "vae")
    with pytest.raises(BaseModelNotFound, match="no text_encoder/, tokenizer/, scheduler/"):
        resolve_base_model(str(partial))


def test_a_cached_hub_name_loads_offline(monkeypatch, tmp_path, tiny_sd):
    """The Hub path for real: a name resolved through a (hand-made) Hugging Face cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--text2sign-tests--tiny-sd"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (snapshot / part).symlink_to(tiny_sd / part)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    base = load_base_model("text2sign-tests/tiny-sd")
    assert base.path == snapshot
    assert base.unet.config.cross_attention_dim == 32
