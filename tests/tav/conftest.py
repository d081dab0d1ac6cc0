"""A tiny Stable Diffusion 2.x, built once per session from small configs and saved in the
diffusers folder layout, so the code under test loads it exactly as it loads the real model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from shared.data.toy import make_toy_dataset

NUM_FRAMES, SIZE = 4, 16  # 16 px frames -> 8 x 8 latents (the tiny VAE halves once)
TOKENS = 16


def _tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer over single characters (real CLIPTokenizer code, a tiny vocab and
    no merges), saved as tokenizer/; returns the vocabulary size."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    raw = folder / "raw_tokenizer"
    raw.mkdir(parents=True)
    (raw / "vocab.json").write_text(json.dumps(vocab))
    (raw / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"),
                              model_max_length=TOKENS)
    tokenizer.save_pretrained(folder / "tokenizer")
    shutil.rmtree(raw)
    return len(vocab)


def write_scheduler(folder: Path, prediction_type: str) -> None:
    """Stable Diffusion 2.1's scheduler config as shipped (PNDM); training reads it as DDPM."""
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0",
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": prediction_type,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None}))


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon") -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vocab_size = _tokenizer(folder)
    UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=SIZE,
    ).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TOKENS, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, projection_dim=32,
    )).save_pretrained(folder / "text_encoder")
    write_scheduler(folder, prediction_type)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models run fastest on one thread (the 2-core CI box is shared): every module here
    takes tests/conftest.py's one_torch_thread."""


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory, tiny_sd) -> Path:
    """The same weights with a v-prediction scheduler (as SD 2.1-768)."""
    folder = tmp_path_factory.mktemp("tiny_sd_v")
    for part in ("unet", "vae", "text_encoder", "tokenizer", "model_index.json"):
        (folder / part).symlink_to(tiny_sd / part)
    write_scheduler(folder, "v_prediction")
    return folder


@pytest.fixture(scope="session")
def toy_clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy_clips")
    make_toy_dataset(folder, n=2, num_prompts=2, num_frames=8, height=24, width=32,
                     progress=False)
    return folder


@pytest.fixture(scope="session")
def make_config(tiny_sd, toy_clips):
    """A factory of tiny, fast TAVConfigs on the tiny model and the toy clips."""
    from t2s_torch.tav.config import TAVConfig

    def make(output_dir: Path, **overrides) -> TAVConfig:
        settings = dict(pretrained_model_name_or_path=str(tiny_sd), data_root=str(toy_clips),
                        output_dir=str(output_dir), num_frames=NUM_FRAMES, height=SIZE,
                        width=SIZE, train_batch_size=2, max_train_steps=3, validation_steps=0,
                        validation_num_inference_steps=3, checkpointing_steps=0,
                        learning_rate=1e-3)
        settings.update(overrides)
        return TAVConfig(**settings).validate()

    return make
