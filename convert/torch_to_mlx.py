"""Convert a text2sign checkpoint from the torch layout to the mlx layout.
Numpy + safetensors only: neither torch nor mlx is imported.

    python convert/torch_to_mlx.py IN OUT [--dtype fp32|fp16|bf16] [--force]

`--help` says what is converted and what is not; the work is `shared.model.convert`, the command
line `shared.app.cli_convert`.
"""

from __future__ import annotations

from shared.app.cli_convert import main

if __name__ == "__main__":
    raise SystemExit(main(source="torch", target="mlx"))
