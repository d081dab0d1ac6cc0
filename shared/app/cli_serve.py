"""The `serve` verb of both tools: parse the flags, then `shared.app.serve.serve` does the work
(load the checkpoint once, serve the page until Ctrl-C)."""

from __future__ import annotations

import click

from shared.app.cli_common import quiet_libraries
from shared.app.serve import DEFAULT_PORT, MAX_CHARS, MAX_QUEUE, MAX_SAMPLES


@click.command("serve")
@click.option("--checkpoint", required=True, type=click.Path(),
              help="A training run's folder (its newest checkpoint), a step_N folder, or "
                   "checkpoints/latest. Loaded once: deleting it while serving changes nothing.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default is this machine only; 0.0.0.0 opens it "
                   "to the network, with no login and no TLS (docs/serve.md).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on; 0 picks a free one (the URL is printed).")
@click.option("--device", default=None, help="Device (default: the best available).")
@click.option("--concurrency", type=click.IntRange(1), default=1, show_default=True,
              help="Generations run side by side. More than 1 only on a GPU: on the CPU they "
                   "share the cores, so requests queue and run one at a time.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Captioned clips whose words are the vocabulary the page checks sentences "
                   "against (default: the checkpoint's data.data_dir).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Keep every generated GIF and .txt caption here, one folder per request "
                   "(default: a temporary folder, removed when the server stops).")
@click.option("--max-steps", type=click.IntRange(1), default=None,
              help="Most sampler steps a request may ask for (default: the model's noise "
                   "schedule, e.g. 1000).")
@click.option("--max-samples", type=click.IntRange(1), default=MAX_SAMPLES, show_default=True,
              help="Most samples per request.")
@click.option("--max-chars", type=click.IntRange(1), default=MAX_CHARS, show_default=True,
              help="Longest sentence accepted, in characters.")
@click.option("--max-queue", type=click.IntRange(1), default=MAX_QUEUE, show_default=True,
              help="Requests allowed to wait; more are refused with a 'busy' message.")
@click.option("--no-ema", is_flag=True, help="Use the raw weights, not the EMA ones.")
@click.option("--vae", default=None, metavar="PATH_OR_ID",
              help="Latent mode: decode with this VAE instead of the one the checkpoint names.")
@click.pass_context
def serve_command(ctx, checkpoint, host, port, device, concurrency, data_dir, out_dir,
                  max_steps, max_samples, max_chars, max_queue, no_ema, vae) -> None:
    """A local web page: type a sentence, watch the model sign it.

    \b
    Example:
      TOOL serve --checkpoint runs/demo/run-toy
      (then open the printed http://127.0.0.1:7860/)

    The page has a text box and the sampler, steps, guidance, seed and number of samples
    (defaults from the checkpoint's config); it shows each result as an enlarged GIF with its
    caption, settings and the time it took, with downloads of the GIF and its .txt caption.
    It warns about words the training captions never had (the vocabulary of data.data_dir,
    or --data). The model is loaded once; requests queue in the order they arrive and run one
    at a time (--concurrency N on a GPU), the page showing the place in the queue and the
    sampler's step. Bad input (an empty or over-long sentence, steps or a seed out of range)
    gets a message on the page; the server keeps running. It listens on 127.0.0.1 only unless
    --host says otherwise. Stop it with Ctrl-C.
    """
    from shared.app.serve import serve

    quiet_libraries(True)
    serve(ctx.obj, checkpoint, host=host, port=port, device=device, use_ema=not no_ema, vae=vae,
          concurrency=concurrency, data_dir=data_dir, out_dir=out_dir, max_steps=max_steps,
          max_samples=max_samples, max_chars=max_chars, max_queue=max_queue, log=click.echo)
