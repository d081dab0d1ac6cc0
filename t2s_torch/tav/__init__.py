"""Tune-A-Video fine-tuning of Stable Diffusion 2.x on sign clips (diffusers + accelerate).

A pretrained text-to-image UNet is inflated to video with diffusers' own extension points
(attention processors and forward hooks, `inflate`), fine-tuned on the shared clip data set
(`train`, `t2s-torch finetune-tav`) and sampled with DDIM, optionally from the DDIM inversion of
a reference clip (`pipeline`, `sample`, `t2s-torch sample-tav`). Modules import torch and
diffusers; `config` and `cli` do not, so the command line stays quick to start.
"""
