"""The model's framework-free side: the UNet's block plan, FLOPs, tokens and the text-encoder
contract, the checkpoint directory protocol, its tensor files' checks and the resume policy,
safetensors io, `torch.save` files read without torch, layouts
and the torch <-> MLX converter.
Imports `shared.config` and `shared.diffusion` (a converted torch optimizer gets its scheduled
lr)."""
